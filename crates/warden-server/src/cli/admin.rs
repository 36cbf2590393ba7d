//! The admin commands (`user`, `site`, `machines`, `events`): they work on the database
//! directly, on the machine the server runs on, and record what they change in the audit trail
//! (actor `cli`, source `local`). A new enrollment key is printed once; a password is read from
//! the terminal or standard input and never printed.

use serde::Serialize;

use super::{MachinesCommand, SiteCommand, UserCommand};
use crate::store::{Db, StoreError};

fn done(e: StoreError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn print<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print!("{}", text(value));
    }
}

/// A list: JSON as it is, text one line per item, or `none` saying what there is none of.
fn print_list<T: Serialize>(json: bool, items: &[T], none: &str, line: impl Fn(&T) -> String) {
    print(json, &items, |items| {
        if items.is_empty() {
            format!("{none}\n")
        } else {
            items.iter().map(&line).collect()
        }
    });
}

/// What a command on one machine did: `{"machine_id", "result"}` in JSON, else a sentence.
fn print_machine(json: bool, machine_id: &str, result: &str, text: &str) {
    print(
        json,
        &serde_json::json!({"machine_id": machine_id, "result": result}),
        |_| format!("{machine_id} {text}\n"),
    );
}

use super::rfc3339 as ms;

/// `warden-server user …`
pub async fn user(db: &Db, json: bool, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name,
            role,
            password_stdin,
        } => {
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\n', '\r']).to_owned()
            } else {
                let first = rpassword::prompt_password(format!("password for {name}: "))?;
                let again = rpassword::prompt_password("again: ")?;
                anyhow::ensure!(first == again, "the passwords differ; nothing was changed");
                first
            };
            let role = role.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let op = db
                .add_operator(&name, role, &password)
                .await
                .map_err(done)?;
            db.event(
                "user.add",
                "cli",
                &format!("operator {name}"),
                "local",
                role.as_str(),
            )
            .await
            .map_err(done)?;
            print(json, &op, |o| {
                format!("operator {} added ({})\n", o.name, o.role.as_str())
            });
        }
        UserCommand::List => {
            let ops = db.operators().await.map_err(done)?;
            print_list(json, &ops, "no operators", |o| {
                format!(
                    "{:<24} {:<9} since {}\n",
                    o.name,
                    o.role.as_str(),
                    ms(o.created_ms)
                )
            });
        }
    }
    Ok(())
}

/// `warden-server site …`
pub async fn site(db: &Db, json: bool, command: SiteCommand) -> anyhow::Result<()> {
    match command {
        SiteCommand::Add {
            code,
            name,
            company,
        } => {
            let site = db.add_site(&code, &name, &company).await.map_err(done)?;
            db.event("site.add", "cli", &format!("site {code}"), "local", "")
                .await
                .map_err(done)?;
            print(json, &site, |s| format!("site {} added\n", s.site_code));
        }
        SiteCommand::List => {
            let sites = db.sites().await.map_err(done)?;
            print_list(json, &sites, "no sites", |s| {
                format!(
                    "{:<20} {:<30} {:<20} key v{}\n",
                    s.site_code, s.display_name, s.company, s.key_version
                )
            });
        }
        SiteCommand::RotateKey { code } => {
            let key = db.rotate_key(&code).await.map_err(done)?;
            db.event(
                "key.rotate",
                "cli",
                &format!("site {code}"),
                "local",
                &key.fingerprint_label,
            )
            .await
            .map_err(done)?;
            print(json, &key, |k| {
                format!(
                    "{}\nenrollment key {} of site {code}: shown once, store it now; the previous key no longer works\n",
                    k.key, k.fingerprint_label
                )
            });
        }
        SiteCommand::Key { code } => {
            let key = db.active_key(&code).await.map_err(done)?;
            print(json, &key, |k| {
                format!("{} (issued {})\n", k.fingerprint_label, ms(k.created_ms))
            });
        }
    }
    Ok(())
}

/// `warden-server machines …`
pub async fn machines(db: &Db, json: bool, command: MachinesCommand) -> anyhow::Result<()> {
    let event = |kind: &'static str, id: String| {
        let db = db.clone();
        async move {
            db.event(kind, "cli", &format!("machine {id}"), "local", "")
                .await
                .map_err(done)
        }
    };
    match command {
        MachinesCommand::List {
            site,
            state,
            text,
            limit,
            after,
        } => {
            let after = match after.as_deref() {
                None => None,
                Some(c) => Some(crate::store::Cursor::decode(c).map_err(done)?),
            };
            let query = crate::store::MachineQuery {
                site,
                state,
                text,
                after,
                limit,
                ..Default::default()
            };
            let (machines, next) = db.machines(&query).await.map_err(done)?;
            if let Some(next) = next {
                eprintln!("more machines: add --after {}", next.encode());
            }
            print_list(json, &machines, "no machines", |m| {
                format!(
                    "{}  {:<12} {:<24} {:<11}{} {:<12} key {:<4} agent {:<10} seen {}\n",
                    m.machine_id,
                    m.site_code,
                    m.hostname,
                    m.state,
                    if m.banned { " banned" } else { "" },
                    if m.connected {
                        "connected"
                    } else {
                        "disconnected"
                    },
                    m.machine_key_version
                        .map_or_else(|| "-".to_owned(), |v| format!("v{v}")),
                    m.agent_version.as_deref().unwrap_or("-"),
                    ms(m.last_seen_ms)
                )
            });
        }
        MachinesCommand::Approve { machine_id } => {
            db.approve(&machine_id).await.map_err(done)?;
            event("machine.approve", machine_id.clone()).await?;
            print_machine(
                json,
                &machine_id,
                "approved",
                "approved: its next enrollment gets a key",
            );
        }
        MachinesCommand::Remove { machine_id } => {
            let removed = db.remove(&machine_id).await.map_err(done)?;
            event("machine.remove", machine_id.clone()).await?;
            let (result, text) = if removed {
                ("removed", "removed")
            } else {
                ("unchanged", "was already removed")
            };
            print_machine(json, &machine_id, result, text);
        }
        MachinesCommand::Ban { machine_id } => {
            db.ban(&machine_id).await.map_err(done)?;
            event("machine.ban", machine_id.clone()).await?;
            print_machine(json, &machine_id, "banned", "banned");
        }
        MachinesCommand::Quarantine { machine_id } => {
            let done = db.quarantine(&machine_id).await.map_err(done)?;
            event("machine.quarantine", machine_id.clone()).await?;
            let (result, text) = if done {
                (
                    "quarantined",
                    "quarantined: its link closes within seconds; `machines clear` lets it back",
                )
            } else {
                ("unchanged", "was not active: unchanged")
            };
            print_machine(json, &machine_id, result, text);
        }
        MachinesCommand::Clear { machine_id } => {
            db.clear_quarantine(&machine_id).await.map_err(done)?;
            event("machine.clear", machine_id.clone()).await?;
            print_machine(
                json,
                &machine_id,
                "cleared",
                "cleared: it may link again with its current key",
            );
        }
        MachinesCommand::Unban { machine_id } => {
            let was = db.unban(&machine_id).await.map_err(done)?;
            event("machine.unban", machine_id.clone()).await?;
            let (result, text) = if was {
                ("unbanned", "unbanned")
            } else {
                ("unchanged", "was not banned")
            };
            print_machine(json, &machine_id, result, text);
        }
    }
    Ok(())
}

/// `warden-server events`: the audit trail, newest first.
pub async fn events(db: &Db, json: bool, kind: Option<String>, limit: i64) -> anyhow::Result<()> {
    let events = db
        .events(kind.as_deref(), None, limit)
        .await
        .map_err(done)?;
    print_list(json, &events, "no events", |e| {
        format!(
            "{} {:<22} {:<28} {:<40} {} {}\n",
            ms(e.ts_ms),
            e.kind,
            e.actor,
            e.target,
            e.source,
            e.detail
        )
    });
    Ok(())
}
