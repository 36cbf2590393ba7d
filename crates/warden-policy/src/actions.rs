//! Actions: what a caller may ask the daemon to run, declared in `[[action]]`.
//!
//! An action's argv is a fixed template; a `{param}` placeholder fills a whole element or part of
//! one, and a value only ever becomes (part of) one argv element: there is no shell. Declarations
//! are checked when the configuration loads; values are checked here against their declaration
//! when a job is requested. A rejected value is named by its parameter and rule, never echoed.
//! Paths are checked lexically here; proving on the filesystem that a path stays under its prefix
//! is the daemon's part (this crate does no I/O).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_json::Value;
use warden_proto::jobs::{ActionInfo, ParamInfo, ParamKind};
use warden_proto::{ActionName, Gid, Tier, Uid};

use crate::compile::Directory;
use crate::config::{ActionSection, ParamSection, Problem, line_of};

/// What a redacted value is shown as.
pub const REDACTED: &str = "<redacted>";

/// A declared action, ready to run.
#[derive(Debug, Clone)]
pub struct ActionSpec {
    pub name: ActionName,
    pub description: String,
    pub argv: Vec<ArgTemplate>,
    pub params: BTreeMap<String, ParamSpec>,
    /// `None`: the daemon's own user.
    pub run_as: Option<RunAs>,
    pub env: BTreeMap<String, String>,
    pub env_keep: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub timeout: Duration,
    /// Name of the signal that asks the job to stop (e.g. `SIGTERM`).
    pub cancel_signal: String,
    pub cancel_grace: Duration,
    pub concurrency_group: Option<String>,
    /// Whether a job waits for a busy concurrency group (`false`: refused with `conflict`).
    pub queue: bool,
    pub tier: Tier,
    pub ops: Vec<String>,
    pub mutating: bool,
    pub remote: bool,
    pub rollback: Option<Vec<ArgTemplate>>,
    pub reconcile: Option<Vec<ArgTemplate>>,
    /// The resource kinds whose hook (`on_create`, `on_delete`) this action is. A hook's
    /// parameters (`owner`, `uid`, `path`) must come from the kernel and the registry, never
    /// from a caller, so only its kinds start it: `job.start` treats it as undeclared.
    pub hook_for: Vec<String>,
    /// What the job's program and its rollback read on stdin (`None`: `/dev/null`): the way a
    /// secret reaches a job without going where other users can read it (argv is in
    /// `/proc/PID/cmdline` for everyone).
    pub stdin: Option<ArgTemplate>,
}

/// The identity a job runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: Uid,
    /// The user's primary group, or the configured `group`.
    pub gid: Gid,
}

/// One declared parameter.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub rule: ParamRule,
    pub secret: bool,
}

/// What a parameter's value must be.
#[derive(Debug, Clone)]
pub enum ParamRule {
    String {
        max_len: usize,
        pattern: Option<(String, Regex)>,
    },
    Enum(Vec<String>),
    Int {
        min: i64,
        max: i64,
    },
    Bool,
    Path {
        under: Vec<PathBuf>,
        must_exist: bool,
    },
}

/// One argv element: literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgTemplate(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Param(String),
}

impl ArgTemplate {
    /// Parses `text`: `{name}` is a placeholder, `{{` and `}}` are literal braces.
    pub fn parse(text: &str) -> Result<ArgTemplate, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed || name.contains('{') {
                        return Err(format!("`{text}` has an unclosed placeholder"));
                    }
                    if name.is_empty() {
                        return Err(format!("`{text}` has an empty placeholder `{{}}`"));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Param(name));
                }
                '}' => return Err(format!("`{text}` has a `}}` without `{{` (write `}}}}`)")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() || pieces.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(ArgTemplate(pieces))
    }

    /// The parameters this element uses.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Param(n) => Some(n.as_str()),
            Piece::Lit(_) => None,
        })
    }

    /// The literal text, if the element has no placeholder.
    pub fn literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Piece::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// The element with each placeholder replaced by its value. Values for every placeholder
    /// exist: declarations are checked at load and values before a job starts.
    pub fn render(&self, values: &BTreeMap<String, String>) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Lit(s) => s.as_str(),
                Piece::Param(n) => values.get(n).map_or("", String::as_str),
            })
            .collect()
    }
}

/// Renders a whole argv.
pub fn render(argv: &[ArgTemplate], values: &BTreeMap<String, String>) -> Vec<String> {
    argv.iter().map(|a| a.render(values)).collect()
}

/// A value that passed its declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Ready to go into argv.
    Text(String),
    /// A path under `prefix`, lexically; the daemon must still prove on the filesystem that
    /// `rel` resolves below `prefix` without symlinks.
    Path {
        full: PathBuf,
        prefix: PathBuf,
        rel: PathBuf,
        must_exist: bool,
    },
}

/// A value that does not fit its declaration. Says which parameter and which rule, never the
/// value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("param `{param}`: {rule}")]
pub struct ParamError {
    pub param: String,
    pub rule: String,
}

fn param_error(param: &str, rule: impl Into<String>) -> ParamError {
    ParamError {
        param: param.to_owned(),
        rule: rule.into(),
    }
}

impl ParamSpec {
    fn check(&self, name: &str, value: &Value) -> Result<Checked, ParamError> {
        let text = |what: &str| -> Result<&str, ParamError> {
            let s = value
                .as_str()
                .ok_or_else(|| param_error(name, format!("must be {what}")))?;
            if s.contains('\0') {
                return Err(param_error(name, "must not contain NUL"));
            }
            Ok(s)
        };
        match &self.rule {
            ParamRule::String { max_len, pattern } => {
                let s = text("a string")?;
                if s.chars().count() > *max_len {
                    return Err(param_error(
                        name,
                        format!("must be at most {max_len} characters"),
                    ));
                }
                match pattern {
                    Some((src, re)) if !re.is_match(s) => {
                        Err(param_error(name, format!("must match the pattern {src}")))
                    }
                    None if s.chars().any(char::is_control) => Err(param_error(
                        name,
                        "must not contain control characters (declare a pattern to allow them)",
                    )),
                    _ => Ok(Checked::Text(s.to_owned())),
                }
            }
            ParamRule::Enum(values) => {
                let s = text("a string")?;
                if values.iter().any(|v| v == s) {
                    Ok(Checked::Text(s.to_owned()))
                } else {
                    Err(param_error(
                        name,
                        format!("must be one of {}", values.join(", ")),
                    ))
                }
            }
            ParamRule::Int { min, max } => match value.as_i64() {
                Some(n) if (*min..=*max).contains(&n) => Ok(Checked::Text(n.to_string())),
                _ => Err(param_error(
                    name,
                    format!("must be an integer from {min} to {max}"),
                )),
            },
            ParamRule::Bool => value
                .as_bool()
                .map(|b| Checked::Text(b.to_string()))
                .ok_or_else(|| param_error(name, "must be true or false")),
            ParamRule::Path { under, must_exist } => {
                let raw = text("an absolute path")?;
                let full = PathBuf::from(raw);
                // Raw segments, not `Path::components`, which silently drops `.` mid-path.
                let lexically_clean = full.is_absolute()
                    && raw.split('/').all(|seg| seg != "." && seg != "..")
                    && full
                        .components()
                        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
                if !lexically_clean {
                    return Err(param_error(
                        name,
                        "must be an absolute path without `.` or `..` components",
                    ));
                }
                let allowed = || {
                    under
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let prefix = under
                    .iter()
                    .find(|p| full.starts_with(p))
                    .ok_or_else(|| param_error(name, format!("must be under {}", allowed())))?;
                let rel = full
                    .strip_prefix(prefix)
                    .unwrap_or(Path::new(""))
                    .to_path_buf();
                Ok(Checked::Path {
                    full: full.clone(),
                    prefix: prefix.clone(),
                    rel,
                    must_exist: *must_exist,
                })
            }
        }
    }

    fn info(&self) -> ParamInfo {
        let kind = match &self.rule {
            ParamRule::String { max_len, pattern } => ParamKind::String {
                max_len: *max_len,
                pattern: pattern.as_ref().map(|(src, _)| src.clone()),
            },
            ParamRule::Enum(values) => ParamKind::Enum {
                values: values.clone(),
            },
            ParamRule::Int { min, max } => ParamKind::Int {
                min: *min,
                max: *max,
            },
            ParamRule::Bool => ParamKind::Bool,
            ParamRule::Path { under, must_exist } => ParamKind::Path {
                under: under.iter().map(|p| p.display().to_string()).collect(),
                must_exist: *must_exist,
            },
        };
        ParamInfo {
            kind,
            secret: self.secret,
        }
    }
}

/// Characters of an undeclared parameter's name kept in an error.
const UNDECLARED_NAME_MAX: usize = 64;

/// A caller's name for a parameter no action declares, fit for an error message and a log
/// line: at most [`UNDECLARED_NAME_MAX`] characters, control characters escaped.
fn undeclared_name(name: &str) -> String {
    let mut shown: String = name
        .chars()
        .take(UNDECLARED_NAME_MAX)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if name.chars().nth(UNDECLARED_NAME_MAX).is_some() {
        shown.push('…');
    }
    shown
}

impl ActionSpec {
    /// Checks every given value against its declaration. Every declared parameter is required;
    /// undeclared ones are refused.
    pub fn check_params(
        &self,
        given: &BTreeMap<String, Value>,
    ) -> Result<BTreeMap<String, Checked>, ParamError> {
        if let Some(unknown) = given.keys().find(|k| !self.params.contains_key(*k)) {
            // The name is the caller's: shown cut and escaped, never as sent.
            return Err(param_error(
                &undeclared_name(unknown),
                "is not a parameter of this action",
            ));
        }
        self.params
            .iter()
            .map(|(name, spec)| {
                let value = given
                    .get(name)
                    .ok_or_else(|| param_error(name, "is required"))?;
                Ok((name.clone(), spec.check(name, value)?))
            })
            .collect()
    }

    /// `given` with every secret value replaced by [`REDACTED`]: what may be shown or recorded.
    pub fn redact(&self, given: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
        given
            .iter()
            .map(|(k, v)| {
                let secret = self.params.get(k).is_none_or(|p| p.secret);
                let shown = if secret {
                    Value::from(REDACTED)
                } else {
                    v.clone()
                };
                (k.clone(), shown)
            })
            .collect()
    }

    /// The action as `actions.list` shows it.
    pub fn info(&self) -> ActionInfo {
        ActionInfo {
            name: self.name.clone(),
            description: self.description.clone(),
            tier: self.tier,
            ops: self.ops.clone(),
            mutating: self.mutating,
            params: self
                .params
                .iter()
                .map(|(n, p)| (n.clone(), p.info()))
                .collect(),
            timeout_s: self.timeout.as_secs(),
            concurrency_group: self.concurrency_group.clone(),
            rollback: self.rollback.is_some(),
        }
    }
}

fn valid_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn valid_group_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Compiles the `[[action]]` tables. `ops` are the toggles `[ops]` declares.
pub(crate) fn compile_actions(
    sections: &[toml::Spanned<ActionSection>],
    ops: &BTreeSet<String>,
    text: &str,
    dir: &dyn Directory,
    errors: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> BTreeMap<ActionName, ActionSpec> {
    let mut out = BTreeMap::new();
    for spanned in sections {
        let mut p = Problems {
            text,
            errors: &mut *errors,
            warnings: &mut *warnings,
        };
        let a = spanned.get_ref();
        let name = match ActionName::try_from(a.name.get_ref().clone()) {
            Ok(n) => n,
            Err(e) => {
                p.at(a.name.span(), e);
                continue;
            }
        };
        if out.contains_key(&name) {
            p.at(a.name.span(), format!("action `{name}` is declared twice"));
            continue;
        }
        if let Some(spec) = compile_action(name.clone(), a, ops, dir, &mut p) {
            out.insert(name, spec);
        }
    }
    out
}

/// Collects problems with the line of the span they concern.
struct Problems<'a> {
    text: &'a str,
    errors: &'a mut Vec<Problem>,
    warnings: &'a mut Vec<Problem>,
}

impl Problems<'_> {
    fn at(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        self.errors.push(Problem {
            line: Some(line_of(self.text, &span)),
            column: None,
            message: message.into(),
        });
    }

    /// A problem that does not stop the configuration from loading.
    fn warn(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        self.warnings.push(Problem {
            line: Some(line_of(self.text, &span)),
            column: None,
            message: message.into(),
        });
    }
}

type SpannedArgv = toml::Spanned<Vec<toml::Spanned<String>>>;

fn compile_argv(
    what: &str,
    argv: &SpannedArgv,
    params: &BTreeMap<String, ParamSpec>,
    p: &mut Problems<'_>,
) -> Option<Vec<ArgTemplate>> {
    let mut out = Vec::new();
    let mut ok = true;
    if argv.get_ref().is_empty() {
        p.at(argv.span(), format!("{what} must name a program"));
        return None;
    }
    for (i, elem) in argv.get_ref().iter().enumerate() {
        match ArgTemplate::parse(elem.get_ref()) {
            Err(e) => {
                p.at(elem.span(), format!("{what}[{i}]: {e}"));
                ok = false;
            }
            Ok(t) => {
                if i == 0 && !t.literal().is_some_and(|s| Path::new(s).is_absolute()) {
                    p.at(
                        elem.span(),
                        format!(
                            "{what}[0] must be an absolute path to a program, without placeholders"
                        ),
                    );
                    ok = false;
                }
                for used in t.params() {
                    if !params.contains_key(used) {
                        p.at(
                            elem.span(),
                            format!("{what} uses `{{{used}}}`, which is not a declared param"),
                        );
                        ok = false;
                    }
                }
                if elem.get_ref().contains('\0') {
                    p.at(elem.span(), format!("{what}[{i}] contains NUL"));
                    ok = false;
                }
                out.push(t);
            }
        }
    }
    ok.then_some(out)
}

fn compile_param(
    name: &str,
    section: &toml::Spanned<ParamSection>,
    p: &mut Problems<'_>,
) -> Option<ParamSpec> {
    let span = section.span();
    let (rule, secret) = match section.get_ref() {
        ParamSection::String {
            max_len,
            pattern,
            secret,
        } => {
            let pattern = match pattern {
                None => None,
                Some(src) => {
                    let anchored = format!("^(?:{src})$");
                    match regex::RegexBuilder::new(&anchored)
                        .size_limit(1 << 20)
                        .build()
                    {
                        Ok(re) => Some((src.clone(), re)),
                        Err(e) => {
                            p.at(span, format!("param `{name}`: bad pattern: {e}"));
                            return None;
                        }
                    }
                }
            };
            (
                ParamRule::String {
                    max_len: max_len.0 as usize,
                    pattern,
                },
                *secret,
            )
        }
        ParamSection::Enum { values, secret } => {
            let mut seen = BTreeSet::new();
            if values.is_empty()
                || values
                    .iter()
                    .any(|v| v.is_empty() || v.contains('\0') || !seen.insert(v))
            {
                p.at(
                    span,
                    format!("param `{name}`: enum values must be distinct, non-empty strings"),
                );
                return None;
            }
            (ParamRule::Enum(values.clone()), *secret)
        }
        ParamSection::Int { min, max, secret } => {
            if min > max {
                p.at(
                    span,
                    format!("param `{name}`: min {min} is above max {max}"),
                );
                return None;
            }
            (
                ParamRule::Int {
                    min: *min,
                    max: *max,
                },
                *secret,
            )
        }
        ParamSection::Bool { secret } => (ParamRule::Bool, *secret),
        ParamSection::Path {
            under,
            must_exist,
            secret,
        } => {
            if under.is_empty() {
                p.at(
                    span,
                    format!("param `{name}`: a path param needs at least one prefix in `under`"),
                );
                return None;
            }
            (
                ParamRule::Path {
                    under: under.iter().map(|a| a.0.clone()).collect(),
                    must_exist: *must_exist,
                },
                *secret,
            )
        }
    };
    Some(ParamSpec { rule, secret })
}

fn compile_action(
    name: ActionName,
    a: &ActionSection,
    ops: &BTreeSet<String>,
    dir: &dyn Directory,
    p: &mut Problems<'_>,
) -> Option<ActionSpec> {
    let before = p.errors.len();
    let mut params = BTreeMap::new();
    for (pname, section) in &a.params {
        let valid = ActionName::try_from(pname.get_ref().clone()).is_ok();
        if !valid {
            p.at(
                pname.span(),
                format!(
                    "param name `{}` must be 1 to 64 of a-z, 0-9, `_`, `-`, starting with a letter",
                    pname.get_ref()
                ),
            );
            continue;
        }
        if let Some(spec) = compile_param(pname.get_ref(), section, p) {
            params.insert(pname.get_ref().clone(), spec);
        }
    }
    let argv = compile_argv("argv", &a.argv, &params, p);
    let rollback = a
        .rollback
        .as_ref()
        .map(|r| compile_argv("rollback", r, &params, p));
    let reconcile = a
        .reconcile
        .as_ref()
        .map(|r| compile_argv("reconcile", r, &params, p));

    let stdin = a.stdin.as_ref().and_then(|t| compile_stdin(t, &params, p));

    let mut used: BTreeSet<&str> = BTreeSet::new();
    for templates in [
        argv.as_ref(),
        rollback.as_ref().and_then(Option::as_ref),
        reconcile.as_ref().and_then(Option::as_ref),
    ]
    .into_iter()
    .flatten()
    {
        used.extend(templates.iter().flat_map(ArgTemplate::params));
    }
    used.extend(stdin.iter().flat_map(ArgTemplate::params));
    for pname in a.params.keys() {
        if params.contains_key(pname.get_ref()) && !used.contains(pname.get_ref().as_str()) {
            p.at(
                pname.span(),
                format!(
                    "param `{}` is declared but no argv uses it",
                    pname.get_ref()
                ),
            );
        }
    }
    // A secret in argv loads (configurations written before `stdin` must keep working), but
    // every local user can read it in /proc/PID/cmdline while the job runs.
    for (what, list) in [("argv", Some(&a.argv)), ("rollback", a.rollback.as_ref())] {
        for elem in list.iter().flat_map(|l| l.get_ref()) {
            let Ok(t) = ArgTemplate::parse(elem.get_ref()) else {
                continue;
            };
            for secret in t
                .params()
                .filter(|n| params.get(*n).is_some_and(|s| s.secret))
            {
                p.warn(
                    elem.span(),
                    format!(
                        "{what} passes secret param `{secret}`, which every local user can read \
                         in /proc/PID/cmdline while the job runs; pass it on stdin instead \
                         (stdin = \"{{{secret}}}\\n\")"
                    ),
                );
            }
        }
    }
    if let (Some(Some(rec)), Some(r)) = (&reconcile, &a.reconcile) {
        for secret in rec
            .iter()
            .flat_map(ArgTemplate::params)
            .filter(|n| params.get(*n).is_some_and(|s| s.secret))
        {
            p.at(
                r.span(),
                format!("reconcile uses secret param `{secret}`; secrets are not kept for after a restart"),
            );
        }
    }

    for op in &a.ops {
        if !ops.contains(op.get_ref()) {
            p.at(
                op.span(),
                format!(
                    "action needs ops `{}`, which [ops] does not declare",
                    op.get_ref()
                ),
            );
        }
    }
    for (key, value) in &a.env {
        if !valid_env_name(key.get_ref()) || key.get_ref().starts_with("WARDEN_") {
            p.at(
                key.span(),
                format!(
                    "env `{}`: names are letters, digits and `_`; WARDEN_ is reserved",
                    key.get_ref()
                ),
            );
        }
        if value.contains('\0') {
            p.at(key.span(), format!("env `{}` contains NUL", key.get_ref()));
        }
    }
    for key in &a.env_keep {
        if !valid_env_name(key.get_ref()) || key.get_ref().starts_with("WARDEN_") {
            p.at(
                key.span(),
                format!(
                    "env_keep `{}`: names are letters, digits and `_`; WARDEN_ is reserved",
                    key.get_ref()
                ),
            );
        }
    }
    if let Some(g) = &a.concurrency_group
        && !valid_group_name(g.get_ref())
    {
        p.at(
            g.span(),
            format!(
                "concurrency_group `{}` must be 1 to 64 of a-z, 0-9, `_`, `-`, starting with a letter",
                g.get_ref()
            ),
        );
    }
    let run_as = a.run_as.as_ref().and_then(|r| {
        let (uid, primary) = match dir.user(r.user.get_ref()) {
            Ok(Some(ids)) => ids,
            Ok(None) => {
                p.at(
                    r.user.span(),
                    format!("run_as user `{}` does not exist", r.user.get_ref()),
                );
                return None;
            }
            Err(e) => {
                p.at(
                    r.user.span(),
                    format!("cannot look up user `{}`: {e}", r.user.get_ref()),
                );
                return None;
            }
        };
        let gid = match &r.group {
            None => primary,
            Some(g) => match dir.group_gid(g.get_ref()) {
                Ok(Some(gid)) => gid,
                Ok(None) => {
                    p.at(
                        g.span(),
                        format!("run_as group `{}` does not exist", g.get_ref()),
                    );
                    return None;
                }
                Err(e) => {
                    p.at(
                        g.span(),
                        format!("cannot look up group `{}`: {e}", g.get_ref()),
                    );
                    return None;
                }
            },
        };
        Some(RunAs {
            user: r.user.get_ref().clone(),
            uid,
            gid,
        })
    });

    if p.errors.len() > before {
        return None;
    }
    Some(ActionSpec {
        name,
        description: a.description.clone(),
        argv: argv?,
        params,
        run_as,
        env: a
            .env
            .iter()
            .map(|(k, v)| (k.get_ref().clone(), v.clone()))
            .collect(),
        env_keep: a.env_keep.iter().map(|k| k.get_ref().clone()).collect(),
        cwd: a.cwd.as_ref().map(|c| c.0.clone()),
        timeout: Duration::from_secs(a.timeout_s.0),
        cancel_signal: a.cancel.signal.0.clone(),
        cancel_grace: Duration::from_secs(a.cancel.grace_s.0),
        concurrency_group: a.concurrency_group.as_ref().map(|g| g.get_ref().clone()),
        queue: a.queue,
        tier: a.tier,
        ops: a.ops.iter().map(|o| o.get_ref().clone()).collect(),
        mutating: a.mutating,
        remote: a.remote,
        rollback: rollback.flatten(),
        reconcile: reconcile.flatten(),
        hook_for: Vec::new(),
        stdin,
    })
}

/// Compiles `stdin`: one template, whose placeholders must be declared params.
fn compile_stdin(
    text: &toml::Spanned<String>,
    params: &BTreeMap<String, ParamSpec>,
    p: &mut Problems<'_>,
) -> Option<ArgTemplate> {
    let t = match ArgTemplate::parse(text.get_ref()) {
        Ok(t) => t,
        Err(e) => {
            p.at(text.span(), format!("stdin: {e}"));
            return None;
        }
    };
    let mut ok = true;
    for used in t.params() {
        if !params.contains_key(used) {
            p.at(
                text.span(),
                format!("stdin uses `{{{used}}}`, which is not a declared param"),
            );
            ok = false;
        }
    }
    ok.then_some(t)
}

impl fmt::Display for ArgTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            match p {
                Piece::Lit(s) => f.write_str(&s.replace('{', "{{").replace('}', "}}"))?,
                Piece::Param(n) => write!(f, "{{{n}}}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::tests::load;

    #[test]
    fn templates_split_placeholders_and_keep_escaped_braces() {
        let t = ArgTemplate::parse("--unit={unit}.service").unwrap();
        assert_eq!(t.params().collect::<Vec<_>>(), ["unit"]);
        let values = BTreeMap::from([("unit".to_owned(), "nginx".to_owned())]);
        assert_eq!(t.render(&values), "--unit=nginx.service");
        let t = ArgTemplate::parse("{{literal}}").unwrap();
        assert_eq!(t.literal(), Some("{literal}"));
        assert_eq!(t.to_string(), "{{literal}}");
        for bad in ["{open", "close}", "{}", "{a{b}", "}}{p", "x}}{"] {
            assert!(ArgTemplate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ArgTemplate::parse("").unwrap().literal(), Some(""));
    }

    const ACTION: &str = r#"
[ops]
system = true
[[action]]
name = "restart-unit"
description = "Restart one of the allowed systemd units"
argv = ["/usr/bin/systemctl", "restart", "{unit}"]
tier = "operator"
ops = ["system"]
mutating = true
timeout_s = 60
concurrency_group = "units"
[action.params.unit]
type = "enum"
values = ["nginx.service", "postfix.service"]
[action.run_as]
user = "alice"
[action.cancel]
signal = "SIGTERM"
grace_s = 5
"#;

    #[test]
    fn the_documented_example_compiles() {
        let p = load(ACTION).unwrap().policy;
        let a = &p.actions[&ActionName::try_from("restart-unit".to_owned()).unwrap()];
        assert_eq!(
            a.run_as,
            Some(RunAs {
                user: "alice".into(),
                uid: Uid(1001),
                gid: Gid(1001)
            })
        );
        assert_eq!((a.timeout.as_secs(), a.cancel_grace.as_secs()), (60, 5));
        assert_eq!(a.concurrency_group.as_deref(), Some("units"));
        let values = BTreeMap::from([("unit".to_owned(), "nginx.service".to_owned())]);
        assert_eq!(
            render(&a.argv, &values),
            ["/usr/bin/systemctl", "restart", "nginx.service"]
        );
    }

    fn problems(text: &str) -> Vec<(Option<usize>, String)> {
        load(text)
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| (p.line, p.message))
            .collect()
    }

    #[test]
    fn bad_declarations_are_errors_at_their_lines() {
        let cases = [
            (
                "argv = [\"{prog}\"]\n[action.params.prog]\ntype = \"bool\"\n",
                3,
                "argv[0] must be an absolute path",
            ),
            (
                "argv = [\"bin/x\"]\n",
                3,
                "argv[0] must be an absolute path",
            ),
            (
                "argv = [\"/bin/x\", \"{nope}\"]\n",
                3,
                "`{nope}`, which is not a declared param",
            ),
            (
                "argv = [\"/bin/x\"]\n[action.params.unused]\ntype = \"bool\"\n",
                4,
                "declared but no argv uses it",
            ),
            (
                "argv = [\"/bin/x\", \"{s}\"]\n[action.params.s]\ntype = \"string\"\npattern = \"(\"\n",
                4,
                "bad pattern",
            ),
            (
                "argv = [\"/bin/x\", \"{n}\"]\n[action.params.n]\ntype = \"int\"\nmin = 5\nmax = 1\n",
                4,
                "min 5 is above max 1",
            ),
            (
                "argv = [\"/bin/x\", \"{e}\"]\n[action.params.e]\ntype = \"enum\"\nvalues = []\n",
                4,
                "enum values",
            ),
            (
                "argv = [\"/bin/x\"]\nops = [\"power\"]\n",
                4,
                "which [ops] does not declare",
            ),
            (
                "argv = [\"/bin/x\"]\n[action.env]\nWARDEN_JOB_ID = \"x\"\n",
                5,
                "WARDEN_ is reserved",
            ),
            (
                "argv = [\"/bin/x\"]\n[action.run_as]\nuser = \"nobody-here\"\n",
                5,
                "run_as user `nobody-here` does not exist",
            ),
            (
                "argv = [\"/bin/x\", \"{pw}\"]\nreconcile = [\"/bin/r\", \"{pw}\"]\n[action.params.pw]\ntype = \"string\"\nsecret = true\n",
                4,
                "reconcile uses secret param `pw`",
            ),
            ("argv = [\"/bin/x\", \"a}\"]\n", 3, "without `{`"),
            ("argv = []\n", 3, "must name a program"),
        ];
        for (body, line, needle) in cases {
            let text = format!("[ops]\nsystem = true\n[[action]]\nname = \"a\"\n{body}");
            // Line numbers in `cases` count from the `[[action]]` header's next line as line 3.
            let got = problems(&text);
            let want_line = line + 2;
            assert!(
                got.iter()
                    .any(|(l, m)| *l == Some(want_line) && m.contains(needle)),
                "{body}\nwant line {want_line} with {needle:?}, got {got:?}"
            );
        }
        let got = problems(
            "[[action]]\nname = \"a\"\nargv = [\"/bin/x\"]\n[[action]]\nname = \"a\"\nargv = [\"/bin/x\"]\n",
        );
        assert!(
            got.iter()
                .any(|(l, m)| *l == Some(5) && m.contains("declared twice")),
            "{got:?}"
        );
        let got = problems("[[action]]\nname = \"A b\"\nargv = [\"/bin/x\"]\n");
        assert_eq!(got[0].0, Some(2));
        let got = problems("[[action]]\nname = \"a\"\nargv = [\"/bin/x\"]\ncolour = 1\n");
        assert!(got[0].1.contains("unknown field `colour`"), "{got:?}");
        let got = problems(
            "[[action]]\nname = \"a\"\nargv = [\"/bin/x\"]\n[action.cancel]\nsignal = \"SIGSTOP\"\n",
        );
        assert!(
            got[0].1.contains("signal `SIGSTOP`") && got[0].0 == Some(5),
            "{got:?}"
        );
    }

    fn spec(body: &str) -> ActionSpec {
        let text = format!("[[action]]\nname = \"a\"\n{body}");
        let p = load(&text).unwrap().policy;
        (*p.actions.into_values().next().unwrap()).clone()
    }

    fn given(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// Pins: hostile values never pass, and the error names the param and rule, not the value.
    #[test]
    fn hostile_values_are_refused_without_echoing_them() {
        let a = spec(
            "argv = [\"/bin/x\", \"{name}\", \"{n}\", \"{p}\", \"{free}\"]\n\
             [action.params.name]\ntype = \"string\"\nmax_len = 16\npattern = \"[a-z0-9-]+\"\n\
             [action.params.n]\ntype = \"int\"\nmin = 1\nmax = 10\n\
             [action.params.p]\ntype = \"path\"\nunder = [\"/srv/data\"]\n\
             [action.params.free]\ntype = \"string\"\n",
        );
        let ok = given(&[
            ("name", "web-1".into()),
            ("n", 3.into()),
            ("p", "/srv/data/a/b".into()),
            ("free", "any text; even $(this)".into()),
        ]);
        let checked = a.check_params(&ok).unwrap();
        assert_eq!(checked["n"], Checked::Text("3".into()));
        assert!(matches!(&checked["p"], Checked::Path { rel, .. } if rel == Path::new("a/b")));

        let hostile: &[(&str, Value)] = &[
            ("name", "; rm -rf /".into()),
            ("name", "$(id)".into()),
            ("name", "`id`".into()),
            ("name", "a\nb".into()),
            ("name", "a\0b".into()),
            ("name", "x".repeat(17).into()),
            ("name", 5.into()),
            ("n", 11.into()),
            ("n", "3".into()),
            ("n", 3.5.into()),
            ("p", "/srv/data/../../etc/shadow".into()),
            ("p", "/etc/shadow".into()),
            ("p", "/srv/database".into()),
            ("p", "relative/path".into()),
            ("p", "/srv/data/./x".into()),
            ("free", "line\nbreak".into()),
            ("free", "nul\0".into()),
        ];
        for (param, value) in hostile {
            let mut g = ok.clone();
            g.insert(param.to_string(), value.clone());
            let err = a.check_params(&g).unwrap_err();
            assert_eq!(err.param, *param, "{value}");
            let shown = err.to_string();
            if let Some(s) = value.as_str().filter(|s| s.len() > 2) {
                assert!(!shown.contains(s), "{shown} echoes the value");
            }
        }
        let mut missing = ok.clone();
        missing.remove("n");
        assert_eq!(
            a.check_params(&missing).unwrap_err().to_string(),
            "param `n`: is required"
        );
        let mut extra = ok.clone();
        extra.insert("x".into(), 1.into());
        assert_eq!(a.check_params(&extra).unwrap_err().param, "x");
        // An undeclared name is the caller's text: cut and escaped in the error.
        let mut forged = ok.clone();
        forged.insert(
            format!("x\nWARN alert: forged{}", "A".repeat(1 << 20)),
            1.into(),
        );
        let shown = a.check_params(&forged).unwrap_err().to_string();
        assert!(shown.len() < 200 && !shown.contains('\n'), "{shown}");
        assert!(
            shown.starts_with("param `x\\nWARN alert: forged"),
            "{shown}"
        );
    }

    /// Pins: a secret placeholder in argv or rollback loads with a warning at its line that
    /// names `stdin`; a secret passed on stdin loads without one and counts as used.
    #[test]
    fn a_secret_in_argv_is_a_warning_and_stdin_is_the_way() {
        let text = "[[action]]\nname = \"a\"\n\
                    argv = [\"/bin/x\", \"--pw={pw}\"]\n\
                    rollback = [\"/bin/y\", \"{pw}\"]\n\
                    [action.params.pw]\ntype = \"string\"\nsecret = true\n";
        let loaded = load(text).unwrap();
        let got: Vec<_> = loaded
            .warnings
            .iter()
            .map(|w| (w.line, w.message.as_str()))
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, Some(3));
        assert!(
            got[0].1.starts_with("argv passes secret param `pw`"),
            "{got:?}"
        );
        assert!(got[0].1.contains("/proc/PID/cmdline"), "{got:?}");
        assert!(got[0].1.contains("stdin = \"{pw}\\n\""), "{got:?}");
        assert_eq!(got[1].0, Some(4));
        assert!(got[1].1.starts_with("rollback passes secret param `pw`"));

        let text = "[[action]]\nname = \"a\"\nargv = [\"/bin/x\", \"{user}\"]\n\
                    stdin = \"{user}:{pw}\\n\"\n\
                    [action.params.user]\ntype = \"string\"\n\
                    [action.params.pw]\ntype = \"string\"\nsecret = true\n";
        let loaded = load(text).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let a = loaded.policy.actions.into_values().next().unwrap();
        let values = BTreeMap::from([
            ("user".to_owned(), "bob".to_owned()),
            ("pw".to_owned(), "hunter22".to_owned()),
        ]);
        assert_eq!(a.stdin.as_ref().unwrap().render(&values), "bob:hunter22\n");

        let got = problems("[[action]]\nname = \"a\"\nargv = [\"/bin/x\"]\nstdin = \"{nope}\"\n");
        assert!(
            got.iter().any(|(l, m)| *l == Some(4)
                && m.contains("stdin uses `{nope}`, which is not a declared param")),
            "{got:?}"
        );
    }

    #[test]
    fn secrets_are_redacted_and_unknown_keys_too() {
        let a = spec(
            "argv = [\"/bin/x\", \"{user}\", \"{pw}\"]\n\
             [action.params.user]\ntype = \"string\"\n\
             [action.params.pw]\ntype = \"string\"\nsecret = true\n",
        );
        let shown = a.redact(&given(&[
            ("user", "bob".into()),
            ("pw", "hunter2".into()),
            ("zz", "x".into()),
        ]));
        assert_eq!(shown["user"], "bob");
        assert_eq!(shown["pw"], REDACTED);
        assert_eq!(shown["zz"], REDACTED);
        assert!(a.info().params["pw"].secret);
    }
}
