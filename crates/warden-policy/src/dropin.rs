//! Drop-in files (`warden.d/*.toml`): the file model of a file that adds `[[action]]` and
//! `[[resource]]` tables to the main configuration, and the types that name problems by file.
//!
//! A drop-in may declare nothing else: the daemon's sockets, tiers, limits, ops, guards and
//! fleet settings are the main file's alone, so a package that ships actions can never widen who
//! may call them or where. Here drop-ins are parsed and their actions and resource kinds added to
//! the main file's, with names and base directories unique across all files. Reading the files
//! (and checking their owners and modes) is the daemon's; this module only gets their text.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Deserialize;
use toml::Spanned;
use warden_proto::ActionName;

use crate::actions::{self, ActionSpec};
use crate::compile::Directory;
use crate::config::{
    self, ActionSection, ConfigError, Problem, ResourceSection, column_of, line_of, parse_error,
};
use crate::resources::{self, ResourceKind};

/// One configuration file's text and the name its problems are reported under.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub origin: &'a str,
    pub text: &'a str,
}

/// What a drop-in file may hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DropInFile {
    #[serde(default, rename = "action")]
    pub actions: Vec<Spanned<ActionSection>>,
    #[serde(default, rename = "resource")]
    pub resources: Vec<Spanned<ResourceSection>>,
    // The main file's sections, named here so that a drop-in setting one is told why it may not,
    // at the line where it tries.
    #[serde(default)]
    daemon: Option<Spanned<toml::Value>>,
    #[serde(default)]
    limits: Option<Spanned<toml::Value>>,
    #[serde(default)]
    tiers: Option<Spanned<toml::Value>>,
    #[serde(default)]
    listener: Option<Spanned<toml::Value>>,
    #[serde(default)]
    ops: Option<Spanned<toml::Value>>,
    #[serde(default)]
    guards: Option<Spanned<toml::Value>>,
    #[serde(default)]
    jobs: Option<Spanned<toml::Value>>,
    #[serde(default)]
    audit: Option<Spanned<toml::Value>>,
    #[serde(default)]
    fleet: Option<Spanned<toml::Value>>,
}

/// A parsed drop-in with its text, for lines.
#[derive(Debug)]
pub(crate) struct ParsedDropIn<'a> {
    pub source: Source<'a>,
    pub file: DropInFile,
}

/// Parses one drop-in; a section only the main file may set is an error at its line.
pub(crate) fn parse(source: Source<'_>) -> Result<ParsedDropIn<'_>, ConfigError> {
    let Source { origin, text } = source;
    let file: DropInFile = toml::from_str(text).map_err(|e| parse_error(text, origin, &e))?;
    let reserved = [
        ("[daemon]", &file.daemon),
        ("[limits]", &file.limits),
        ("[tiers]", &file.tiers),
        ("[[listener]]", &file.listener),
        ("[ops]", &file.ops),
        ("[guards]", &file.guards),
        ("[jobs]", &file.jobs),
        ("[audit]", &file.audit),
        ("[fleet]", &file.fleet),
    ];
    let problems: Vec<Problem> = reserved
        .into_iter()
        .filter_map(|(name, section)| {
            let span = section.as_ref()?.span();
            Some(Problem {
                line: Some(line_of(text, &span)),
                column: Some(column_of(text, &span)),
                message: format!(
                    "{name} may be set only in the main configuration file; a drop-in may \
                     declare only [[action]] and [[resource]]"
                ),
            })
        })
        .collect();
    if !problems.is_empty() {
        return Err(ConfigError {
            origin: origin.to_owned(),
            problems,
        });
    }
    Ok(ParsedDropIn { source, file })
}

/// A problem with the file it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub origin: String,
    pub problem: Problem,
}

impl Located {
    /// `origin:line: warning: message`.
    pub fn display_warning(&self) -> impl fmt::Display + '_ {
        self.problem.display_warning(&self.origin)
    }
}

/// A configuration of several files that cannot be used: each file's problems, main file first,
/// drop-ins in the order they were read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub files: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.files.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors { files: vec![e] }
    }
}

/// Errors and warnings found in one drop-in.
#[derive(Debug, Default)]
pub(crate) struct FileProblems {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// The line of each action's name in `sections`.
fn action_lines<'a>(
    sections: &'a [toml::Spanned<config::ActionSection>],
    text: &str,
) -> Vec<(&'a str, usize)> {
    sections
        .iter()
        .map(|s| {
            let n = &s.get_ref().name;
            (n.get_ref().as_str(), line_of(text, &n.span()))
        })
        .collect()
}

/// Compiles each drop-in's actions and adds them to the main file's; a name already declared in
/// an earlier file is an error in the later one, naming where it was first declared.
pub(crate) fn add_dropin_actions(
    mut actions: BTreeMap<ActionName, ActionSpec>,
    main_sections: &[toml::Spanned<config::ActionSection>],
    main: Source<'_>,
    dropins: &[ParsedDropIn<'_>],
    ops: &BTreeSet<String>,
    dir: &dyn Directory,
    found: &mut [(Source<'_>, FileProblems)],
) -> (
    BTreeMap<ActionName, ActionSpec>,
    HashMap<String, (String, usize)>,
) {
    // name → file and line of its first declaration.
    let mut first: HashMap<String, (String, usize)> = HashMap::new();
    for (name, line) in action_lines(main_sections, main.text) {
        first
            .entry(name.to_owned())
            .or_insert_with(|| (main.origin.to_owned(), line));
    }
    for (d, (_, p)) in dropins.iter().zip(found.iter_mut()) {
        let compiled = actions::compile_actions(
            &d.file.actions,
            ops,
            d.source.text,
            dir,
            &mut p.errors,
            &mut p.warnings,
        );
        let here = action_lines(&d.file.actions, d.source.text);
        for (name, spec) in compiled {
            let line = here
                .iter()
                .find(|(n, _)| *n == name.as_str())
                .map(|(_, l)| *l);
            if let Some((origin, at)) = first.get(name.as_str()) {
                p.errors.push(Problem {
                    line,
                    column: None,
                    message: format!("action `{name}` is already declared at {origin}:{at}"),
                });
                continue;
            }
            let at = (d.source.origin.to_owned(), line.unwrap_or(0));
            first.insert(name.as_str().to_owned(), at);
            actions.insert(name, spec);
        }
    }
    (actions, first)
}

/// Compiles each drop-in's resource kinds and adds them; a kind or a base directory already
/// declared in an earlier file is an error in the later one, naming where.
pub(crate) fn add_dropin_resources(
    resources: &mut BTreeMap<String, ResourceKind>,
    main_sections: &[toml::Spanned<config::ResourceSection>],
    main: Source<'_>,
    dropins: &[ParsedDropIn<'_>],
    actions: &BTreeMap<ActionName, ActionSpec>,
    found: &mut [(Source<'_>, FileProblems)],
) {
    // kind → (where declared, base_dir line there).
    let mut first: HashMap<String, (String, String)> = HashMap::new();
    let note = |sections: &[toml::Spanned<config::ResourceSection>],
                source: Source<'_>,
                first: &mut HashMap<String, (String, String)>| {
        for s in sections {
            let r = s.get_ref();
            let at = |span| format!("{}:{}", source.origin, line_of(source.text, &span));
            first
                .entry(r.kind.get_ref().clone())
                .or_insert((at(r.kind.span()), at(r.base_dir.span())));
        }
    };
    note(main_sections, main, &mut first);
    for (d, (_, p)) in dropins.iter().zip(found.iter_mut()) {
        let compiled =
            resources::compile_resources(&d.file.resources, actions, d.source.text, &mut p.errors);
        for section in &d.file.resources {
            let r = section.get_ref();
            let kind = r.kind.get_ref();
            let Some(new) = compiled.get(kind) else {
                continue;
            };
            let line = |span| Some(line_of(d.source.text, &span));
            if let Some((at, _)) = first.get(kind) {
                p.errors.push(Problem {
                    line: line(r.kind.span()),
                    column: None,
                    message: format!("resource kind `{kind}` is already declared at {at}"),
                });
                continue;
            }
            if let Some(other) = resources.values().find(|o| o.base_dir == new.base_dir) {
                let at = first.get(&other.kind).map_or("", |(_, b)| b.as_str());
                p.errors.push(Problem {
                    line: line(r.base_dir.span()),
                    column: None,
                    message: format!(
                        "base_dir {} is already used by resource kind `{}` at {at}",
                        new.base_dir.display(),
                        other.kind
                    ),
                });
                continue;
            }
            resources.insert(kind.clone(), new.clone());
        }
        note(&d.file.resources, d.source, &mut first);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::Policy;
    use crate::compile::tests::FakeDirectory;

    const MAIN: &str =
        "[ops]\nstorage = true\n\n[[action]]\nname = \"first\"\nargv = [\"/bin/true\"]\n";

    fn load(dropins: &[(&str, &str)]) -> Result<crate::compile::LoadedFiles, ConfigErrors> {
        let sources: Vec<Source<'_>> = dropins
            .iter()
            .map(|(origin, text)| Source { origin, text })
            .collect();
        Policy::load_with_dropins(
            Source {
                origin: "main.toml",
                text: MAIN,
            },
            &sources,
            &FakeDirectory,
        )
    }

    #[test]
    fn drop_ins_add_actions_and_resources_that_may_use_the_main_files_ops_and_actions() {
        let loaded = load(&[
            (
                "a.toml",
                "[[action]]\nname = \"second\"\nargv = [\"/bin/true\"]\nops = [\"storage\"]\n",
            ),
            (
                "b.toml",
                "[[resource]]\nkind = \"box\"\nbase_dir = \"/srv/box\"\nmax_per_uid = 1\n\
                 tier = \"read_only\"\non_create = \"hook\"\n\n\
                 [[action]]\nname = \"hook\"\nargv = [\"/bin/true\", \"{name}\"]\n\
                 params.name = { type = \"string\" }\n",
            ),
        ])
        .unwrap();
        let names: Vec<&str> = loaded.policy.actions.keys().map(|a| a.as_str()).collect();
        assert_eq!(names, ["first", "hook", "second"]);
        assert!(loaded.policy.resources.contains_key("box"));
        assert_eq!(
            loaded
                .policy
                .actions
                .values()
                .find(|a| a.name.as_str() == "hook")
                .unwrap()
                .hook_for,
            ["box"]
        );
    }

    #[test]
    fn a_name_declared_in_two_files_is_an_error_naming_both() {
        let e = load(&[(
            "a.toml",
            "\n[[action]]\nname = \"first\"\nargv = [\"/bin/true\"]\n",
        )])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "a.toml:3: action `first` is already declared at main.toml:5"
        );
        let kind = "[[resource]]\nkind = \"box\"\nbase_dir = \"/srv/box\"\nmax_per_uid = 1\n\
                    tier = \"read_only\"\n";
        let e = load(&[("a.toml", kind), ("b.toml", kind)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "b.toml:2: resource kind `box` is already declared at a.toml:2"
        );
        let other = kind.replace("\"box\"", "\"crate\"");
        let e = load(&[("a.toml", kind), ("b.toml", &other)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "b.toml:3: base_dir /srv/box is already used by resource kind `box` at a.toml:3"
        );
    }

    #[test]
    fn a_drop_in_may_not_set_what_only_the_main_file_may() {
        let e = load(&[(
            "a.toml",
            "[[action]]\nname = \"x\"\nargv = [\"/bin/true\"]\n\n[tiers]\nadmin_groups = [\"wadm\"]\n\n[[listener]]\npath = \"/tmp/x.sock\"\n",
        )])
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("a.toml:5:1: [tiers] may be set only in the main configuration file"),
            "{text}"
        );
        assert!(
            text.contains("a.toml:8:1: [[listener]] may be set"),
            "{text}"
        );
    }

    #[test]
    fn errors_in_several_files_are_all_reported_with_file_line_and_column() {
        let e = load(&[
            (
                "a.toml",
                "[[action]]\nname = \"x\"\nargv = [\"/bin/true\"]\ncolour = 1\n",
            ),
            ("b.toml", "[[action]]\nname = 7\n"),
            (
                "c.toml",
                "[[action]]\nname = \"ok\"\nargv = [\"/bin/true\"]\nops = [\"nope\"]\n",
            ),
        ])
        .unwrap_err();
        let origins: Vec<&str> = e.files.iter().map(|f| f.origin.as_str()).collect();
        assert_eq!(origins, ["a.toml", "b.toml", "c.toml"]);
        let text = e.to_string();
        assert!(
            text.contains("a.toml:4:1: unknown field `colour`"),
            "{text}"
        );
        assert!(text.contains("b.toml:2:8: "), "{text}");
        assert!(text.contains("c.toml:4: "), "{text}");
    }
}
