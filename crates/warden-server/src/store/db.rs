//! The database: SQLite in one file under the data directory by default, PostgreSQL given a URL.
//! Both go through sqlx's `Any` driver with one set of queries (`$N` parameters, which both
//! accept) and their own migrations, applied at start. The pool's statements are never logged
//! (they may carry hashes).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The pool and what it is.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// The SQLite file in a data directory.
pub const SQLITE_FILE: &str = "warden-server.db";

impl Db {
    /// Opens `url` (`postgres://…`), or without one the SQLite file in `data_dir` (created, mode
    /// 0700, with the file 0600), and applies the migrations.
    pub async fn open(data_dir: &Path, url: Option<&str>) -> anyhow::Result<Db> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                (u.to_owned(), Backend::Postgres)
            }
            Some(u) => anyhow::bail!(
                "--database-url must be postgres://…, not `{}`",
                u.split(':').next().unwrap_or("")
            ),
            None => {
                use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(data_dir)?;
                let file = data_dir.join(SQLITE_FILE);
                // Made private before SQLite opens it: it holds hashes and the audit trail.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&file)?;
                (format!("sqlite://{}", file.display()), Backend::Sqlite)
            }
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let pool = match backend {
            // One writer at a time is SQLite's nature; one connection makes every transaction
            // simply wait its turn instead of failing busy.
            Backend::Sqlite => AnyPoolOptions::new()
                .max_connections(1)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
                            .await?;
                        Ok(())
                    })
                })
                .connect_with(options)
                .await?,
            Backend::Postgres => AnyPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?,
        };
        match backend {
            Backend::Sqlite => SQLITE.run(&pool).await?,
            Backend::Postgres => POSTGRES.run(&pool).await?,
        }
        Ok(Db { pool, backend })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether `e` is a unique-constraint violation (a concurrent insert of the same thing won).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.code()
                    .is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
        }
        _ => false,
    }
}
