//! Login roles for tests of the database's least privilege (docs/security.md): roles are
//! global to the server while each test has its own database, so every name carries the test
//! database's name, and each test drops what it made.
#![allow(dead_code)]

use tokio_postgres::Client;

/// `url` (a `scheme://user@host/db` URL) with another user and/or a password (the test
/// cluster trusts local connections, so a password is carried, not checked).
pub fn with_credentials(url: &str, user: Option<&str>, password: Option<&str>) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL database address");
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (old_user, host_and_rest) = match rest[..authority_end].rfind('@') {
        Some(at) => (
            rest[..at].split(':').next().unwrap_or_default(),
            &rest[at + 1..],
        ),
        None => ("postgres", rest),
    };
    let user = user.unwrap_or(old_user);
    match password {
        Some(password) => format!("{scheme}://{user}:{password}@{host_and_rest}"),
        None => format!("{scheme}://{user}@{host_and_rest}"),
    }
}

/// Creates login role `name` (optionally with a password) that is a member of `grants` (e.g.
/// `pgtaskd_submitter`); returns its URL for database `url`.
pub async fn login_role(
    admin: &Client,
    url: &str,
    name: &str,
    grants: &[&str],
    password: Option<&str>,
) -> String {
    let password_clause = password.map_or(String::new(), |p| format!(" PASSWORD '{p}'"));
    admin
        .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN{password_clause}"))
        .await
        .unwrap_or_else(|e| panic!("create role {name}: {e}"));
    for grant in grants {
        admin
            .batch_execute(&format!("GRANT {grant} TO \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("grant {grant} to {name}: {e}"));
    }
    with_credentials(url, Some(name), password)
}

/// Drops the roles a test made (and what they own or were granted in this database).
pub async fn drop_roles(admin: &Client, names: &[&str]) {
    for name in names {
        let _ = admin
            .batch_execute(&format!(
                "DROP OWNED BY \"{name}\"; DROP ROLE IF EXISTS \"{name}\""
            ))
            .await;
    }
}

/// Makes the server check `role`'s password on TCP (`scram-sha-256` in front of the test
/// cluster's `trust` lines). `None` when the test cannot edit `pg_hba.conf` (a `DATABASE_URL`
/// server elsewhere): then passwords are carried, not checked.
pub async fn require_password(admin: &Client, role: &str) -> Option<()> {
    let hba: String = admin.query_one("SHOW hba_file", &[]).await.ok()?.get(0);
    let text = std::fs::read_to_string(&hba).ok()?;
    let line = format!("host all \"{role}\" 127.0.0.1/32 scram-sha-256\n");
    std::fs::write(&hba, format!("{line}{text}")).ok()?;
    admin.batch_execute("SELECT pg_reload_conf()").await.ok()?;
    // the postmaster reloads asynchronously
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Some(())
}

/// The SQLSTATE of a refused statement (panics when it was not refused).
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, tokio_postgres::Error>,
    what: &str,
) -> (String, String) {
    match result {
        Ok(value) => panic!("{what} was allowed: {value:?}"),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("{what}: not a database error: {e}"));
            (db.code().code().to_owned(), db.message().to_owned())
        }
    }
}
