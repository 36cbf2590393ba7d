//! Resource kinds (`[[resource]]`): directories users own under a base directory the daemon
//! keeps. What a kind allows is decided here, from the file; making and removing the
//! directories is the daemon's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use regex::Regex;
use warden_proto::{ActionName, Tier};

use crate::actions::ActionSpec;
use crate::config::{Problem, ResourceSection, line_of};
use crate::endpoints::Requirement;

/// Names of a kind whose section sets no `name_pattern`.
pub const DEFAULT_NAME_PATTERN: &str = "^[a-z][a-z0-9_-]{0,31}$";

/// The parameters a hook action may declare; each gets the resource's value.
pub const HOOK_PARAMS: [&str; 5] = ["kind", "name", "owner", "uid", "path"];

/// One declared kind of owned resource.
#[derive(Debug, Clone)]
pub struct ResourceKind {
    pub kind: String,
    pub base_dir: PathBuf,
    pub mode: u32,
    /// As written, for messages.
    pub name_pattern: String,
    pattern: Regex,
    pub max_per_uid: usize,
    /// The tier needed to create one.
    pub tier: Tier,
    pub on_create: Option<ActionName>,
    pub on_delete: Option<ActionName>,
}

impl ResourceKind {
    /// What creating one needs. Never less than `read_only`, and always a change of state.
    pub fn requirement(&self) -> Requirement<'_> {
        Requirement {
            what: std::borrow::Cow::Owned(format!("resource kind {}", self.kind)),
            tier: self.tier.max(Tier::ReadOnly),
            ops: Vec::new(),
            mutating: true,
        }
    }

    /// Whether `name` may name a resource of this kind. Whatever the pattern says, a name is
    /// printable ASCII (no look-alike letters from other scripts), is not empty, `.` or `..`,
    /// does not begin with `.` (the daemon's own work names do), and has no `/`.
    pub fn check_name(&self, name: &str) -> Result<(), String> {
        let shown = name.escape_debug();
        if name.is_empty() || name == "." || name == ".." {
            return Err(format!("`{shown}` cannot name a resource"));
        }
        if !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "resource name `{shown}` must be printable ASCII without spaces"
            ));
        }
        if name.contains('/') || name.starts_with('.') {
            return Err(format!(
                "resource name `{shown}` must not contain `/` or begin with `.`"
            ));
        }
        if !self.pattern.is_match(name) {
            return Err(format!(
                "resource name `{shown}` does not match {} for kind {}",
                self.name_pattern, self.kind
            ));
        }
        Ok(())
    }
}

/// A kind's name: 1 to 64 of `a-z 0-9 _ -`, starting with a letter (as an action's).
fn kind_name(s: &str) -> Result<(), String> {
    ActionName::try_from(s.to_owned()).map(|_| ()).map_err(|_| {
        format!(
            "resource kind `{}` must be 1 to 64 of a-z, 0-9, `_`, `-`, starting with a letter",
            s.escape_debug()
        )
    })
}

pub(crate) fn compile_resources(
    sections: &[toml::Spanned<ResourceSection>],
    actions: &BTreeMap<ActionName, ActionSpec>,
    text: &str,
    errors: &mut Vec<Problem>,
) -> BTreeMap<String, ResourceKind> {
    let mut out = BTreeMap::new();
    let mut bases = BTreeSet::new();
    for spanned in sections {
        let r = spanned.get_ref();
        let mut error = |span: std::ops::Range<usize>, message: String| {
            errors.push(Problem {
                line: Some(line_of(text, &span)),
                column: None,
                message,
            });
        };
        let kind = r.kind.get_ref().clone();
        if let Err(e) = kind_name(&kind) {
            error(r.kind.span(), e);
            continue;
        }
        if out.contains_key(&kind) {
            error(
                r.kind.span(),
                format!("resource kind `{kind}` is declared twice"),
            );
            continue;
        }
        let base_dir = r.base_dir.get_ref().0.clone();
        // Two kinds in one directory would see each other's names.
        if !bases.insert(base_dir.clone()) {
            error(
                r.base_dir.span(),
                format!(
                    "base_dir {} is used by another resource kind",
                    base_dir.display()
                ),
            );
            continue;
        }
        if base_dir.parent().is_none() {
            error(r.base_dir.span(), "base_dir cannot be `/`".to_owned());
            continue;
        }
        let (source, span) = match &r.name_pattern {
            Some(p) => (p.get_ref().clone(), p.span()),
            None => (DEFAULT_NAME_PATTERN.to_owned(), r.kind.span()),
        };
        let pattern = match regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .build()
        {
            Ok(re) => re,
            Err(e) => {
                error(
                    span,
                    format!("resource kind `{kind}`: bad name_pattern: {e}"),
                );
                continue;
            }
        };
        let mut hook = |which: &str, name: &Option<toml::Spanned<String>>| -> Result<_, ()> {
            let Some(name) = name else { return Ok(None) };
            let found = ActionName::try_from(name.get_ref().clone())
                .ok()
                .and_then(|n| actions.get_key_value(&n));
            let Some((action_name, action)) = found else {
                error(
                    name.span(),
                    format!(
                        "{which} of resource kind `{kind}` names no declared action `{}`",
                        name.get_ref().escape_debug()
                    ),
                );
                return Err(());
            };
            if let Some(extra) = action
                .params
                .keys()
                .find(|p| !HOOK_PARAMS.contains(&p.as_str()))
            {
                error(
                    name.span(),
                    format!(
                        "{which} action `{action_name}` declares param `{extra}`; a hook gets only {}",
                        HOOK_PARAMS.join(", ")
                    ),
                );
                return Err(());
            }
            Ok(Some(action_name.clone()))
        };
        let (Ok(on_create), Ok(on_delete)) = (
            hook("on_create", &r.on_create),
            hook("on_delete", &r.on_delete),
        ) else {
            continue;
        };
        out.insert(
            kind.clone(),
            ResourceKind {
                kind,
                base_dir,
                mode: r.mode.0,
                name_pattern: source,
                pattern,
                max_per_uid: r.max_per_uid.0 as usize,
                tier: r.tier,
                on_create,
                on_delete,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::compile::tests::load;

    const KIND: &str = r#"
[[action]]
name = "export"
argv = ["/bin/true", "{name}", "{path}"]
params.name = { type = "string" }
params.path = { type = "string" }
[[resource]]
kind = "workspace"
base_dir = "/srv/ws"
max_per_uid = 3
tier = "read_only"
on_create = "export"
"#;

    /// Pins: a kind compiles with its defaults (mode 0700, the default pattern) and its hook.
    #[test]
    fn a_kind_compiles_with_its_defaults() {
        let p = load(KIND).unwrap().policy;
        let k = &p.resources["workspace"];
        assert_eq!(k.mode, 0o700);
        assert_eq!(k.max_per_uid, 3);
        assert_eq!(k.on_create.as_ref().unwrap().as_str(), "export");
        assert_eq!(k.name_pattern, super::DEFAULT_NAME_PATTERN);
    }

    /// Pins: names that could reach outside the base directory, hide, or look like another
    /// name are refused whatever the pattern allows.
    #[test]
    fn names_are_refused_whatever_the_pattern() {
        let text = KIND.replace(
            "tier = \"read_only\"",
            "tier = \"read_only\"\nname_pattern = \".*\"",
        );
        let p = load(&text).unwrap().policy;
        let k = &p.resources["workspace"];
        for bad in [
            "", ".", "..", "a/b", "../x", ".hidden", "wоrk", "a b", "tab\t", "x\0",
        ] {
            assert!(k.check_name(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(k.check_name("Any_Thing-1").is_ok());
        let strict = load(KIND).unwrap().policy;
        let k = &strict.resources["workspace"];
        assert!(k.check_name("ws1").is_ok());
        for bad in ["Ws1", "1ws", &"a".repeat(33), &"a".repeat(200)] {
            let e = k.check_name(bad).unwrap_err();
            assert!(e.contains("does not match"), "{e}");
        }
    }

    /// Pins: a hook must name a declared action that takes only the resource's parameters, two
    /// kinds may not share a directory, and kinds are not declared twice.
    #[test]
    fn bad_kinds_are_errors_at_their_lines() {
        let bad_hook = KIND.replace("on_create = \"export\"", "on_create = \"nope\"");
        let e = load(&bad_hook).unwrap_err();
        assert!(
            e.problems[0].message.contains("no declared action `nope`"),
            "{e}"
        );
        assert_eq!(e.problems[0].line, Some(12));
        let extra = KIND.replace(
            "params.path = { type = \"string\" }",
            "params.size = { type = \"int\" }",
        );
        let e = load(&extra.replace("{path}", "{size}")).unwrap_err();
        assert!(
            e.problems[0].message.contains("declares param `size`"),
            "{e}"
        );
        let twice = format!(
            "{KIND}[[resource]]\nkind = \"share\"\nbase_dir = \"/srv/ws\"\nmax_per_uid = 1\ntier = \"admin\"\n"
        );
        let e = load(&twice).unwrap_err();
        assert!(
            e.problems[0]
                .message
                .contains("used by another resource kind"),
            "{e}"
        );
        let e = load(&KIND.replace("max_per_uid = 3", "max_per_uid = 0")).unwrap_err();
        assert_eq!(e.problems[0].line, Some(10), "{e}");
        let e = load(&KIND.replace("\"/srv/ws\"", "\"srv/ws\"")).unwrap_err();
        assert_eq!(e.problems[0].line, Some(9), "{e}");
    }
}
