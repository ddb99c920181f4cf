//! What each `weir` subcommand does, given its parsed arguments: manage the data directory
//! (users, items, albums, carts, history), mint signed links, and start the server.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};

use super::args::{
    AlbumCommand, CartCommand, Cli, Command, ItemCommand, PasswordSource, ServeArgs,
};
use super::args::{CheckSystemArgs, TokenArgs, UserCommand};
use super::check_system;
use crate::config;
use crate::storage::Storage as _;
use crate::storage::{valid_id, ItemKind, Store};
use crate::{catalog, demo, password, token};

/// Runs parsed arguments, printing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let data_dir = cli.data_dir;
    let open = |data_dir: Option<PathBuf>| -> anyhow::Result<Store> {
        let dir = config::data_dir(data_dir);
        Store::open(&dir).with_context(|| format!("opening data directory {}", dir.display()))
    };
    match cli.command {
        Command::User(cmd) => user(&open(data_dir)?, cmd, out),
        Command::Item(ItemCommand::Add { id, file, name }) => {
            add_item(&open(data_dir)?, &id, ItemKind::File, name, &[file], out)
        }
        Command::Item(ItemCommand::List { json }) => list_items(&open(data_dir)?, json, out),
        Command::Item(ItemCommand::Verify { ids }) => verify_items(&open(data_dir)?, &ids, out),
        Command::Album(AlbumCommand::Add { id, tracks, name }) => {
            add_item(&open(data_dir)?, &id, ItemKind::Album, name, &tracks, out)
        }
        Command::Cart(cmd) => cart(&open(data_dir)?, cmd, out),
        Command::History { user, json } => {
            let store = open(data_dir)?;
            for e in store.history_list(&user)? {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&e)?)?;
                } else {
                    writeln!(out, "{}\t{}", e.item, format_ms(e.completed_at_ms))?;
                }
            }
            Ok(())
        }
        Command::Token(args) => mint_link(&open(data_dir)?, &args, out),
        Command::Serve(args) => serve(data_dir, &args),
        Command::CheckSystem(args) => check_system(data_dir, &args, out),
    }
}

/// `weir check-system`: judges this host for the server the flags and `--config` describe.
fn check_system(
    data_dir: Option<PathBuf>,
    args: &CheckSystemArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let flags = config::Settings {
        data_dir,
        driver: args.driver,
        uring_features: args.uring_features,
        ..Default::default()
    };
    let cfg = config::resolve_with_file(&flags, args.config.as_deref())?;
    let facts = check_system::Facts::gather(&cfg);
    let checks = check_system::evaluate(&facts, args.connections);
    check_system::report(&checks, args.connections, args.json, out)
}

fn read_password(src: &PasswordSource) -> anyhow::Result<Option<String>> {
    let mut line = String::new();
    if src.password_stdin {
        io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
    } else if let Some(path) = &src.password_file {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading the password from {}", path.display()))?;
        line = text.lines().next().unwrap_or("").to_owned();
    } else {
        return Ok(None);
    }
    let pw = line.trim_end_matches(['\n', '\r']);
    ensure!(!pw.is_empty(), "the password is empty");
    Ok(Some(pw.to_owned()))
}

fn user(store: &Store, cmd: UserCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            password,
            rate,
        } => {
            if !valid_id(&name) {
                return Err(crate::storage::StoreError::InvalidId(name).into());
            }
            if store.user(&name)?.is_some() {
                return Err(crate::storage::StoreError::UserExists(name).into());
            }
            let Some(pw) = read_password(&password)? else {
                bail!("give the password with --password-stdin or --password-file FILE");
            };
            let hash = password::hash_password(&pw)?;
            store.add_user(&name, &hash, rate)?;
            writeln!(out, "added user {name}")?;
        }
        UserCommand::Set {
            name,
            rate,
            password,
        } => {
            let pw = read_password(&password)?;
            if rate.is_none() && pw.is_none() {
                bail!("nothing to change: give --rate, --password-stdin or --password-file");
            }
            if store.user(&name)?.is_none() {
                return Err(crate::storage::StoreError::UnknownUser(name).into());
            }
            if let Some(pw) = pw {
                store.set_user_password(&name, &password::hash_password(&pw)?)?;
            }
            if let Some(rate) = rate {
                store.set_user_rate(&name, rate.into_option())?;
            }
            writeln!(out, "updated user {name}")?;
        }
        UserCommand::List { json } => {
            for u in store.users()? {
                let rate = u.rate.map(|r| r.to_string());
                if json {
                    let v = serde_json::json!({ "name": u.name, "rate": rate });
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out, "{}\t{}", u.name, rate.as_deref().unwrap_or("default"))?;
                }
            }
        }
    }
    Ok(())
}

fn add_item(
    store: &Store,
    id: &str,
    kind: ItemKind,
    name: Option<String>,
    files: &[PathBuf],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // Refuse early rather than after copying gigabytes.
    if !valid_id(id) {
        return Err(crate::storage::StoreError::InvalidId(id.to_owned()).into());
    }
    if let Some(name) = &name {
        crate::storage::check_display_name(id, name)?;
    }
    if store.item(id)?.is_some() {
        return Err(crate::storage::StoreError::ItemExists(id.to_owned()).into());
    }
    let content = store.content_dir();
    let parts = files
        .iter()
        .map(|f| catalog::import_file(&content, f))
        .collect::<Result<Vec<_>, _>>()?;
    store.add_named_item(id, kind, name.as_deref(), &parts)?;
    let size: u64 = parts.iter().map(|p| p.size).sum();
    writeln!(
        out,
        "added {} {id}: {} part(s), {size} bytes",
        kind.as_str(),
        parts.len()
    )?;
    Ok(())
}

fn list_items(store: &Store, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    for item in store.items()? {
        if json {
            let parts: Vec<_> = item
                .parts
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name, "size": p.size, "sha256": p.sha256,
                        "crc32": p.crc32, "mtime": p.mtime,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "id": item.id, "kind": item.kind, "name": item.name, "size": item.size(),
                "parts": parts,
            });
            writeln!(out, "{v}")?;
        } else {
            let names: Vec<_> = item.parts.iter().map(|p| p.name.as_str()).collect();
            writeln!(
                out,
                "{}\t{}\t{}\t{}",
                item.id,
                item.kind.as_str(),
                item.size(),
                names.join(", ")
            )?;
        }
    }
    Ok(())
}

/// `weir item verify`: one line per item, `ID\tok` or `ID\tbad\tPART: WHAT` (one line per
/// bad part); an error (exit 1) if any item is bad or unknown.
fn verify_items(store: &Store, ids: &[String], out: &mut dyn Write) -> anyhow::Result<()> {
    let items = store.items()?;
    let chosen: Vec<_> = if ids.is_empty() {
        items.iter().collect()
    } else {
        let mut v = Vec::new();
        for id in ids {
            match items.iter().find(|i| &i.id == id) {
                Some(i) => v.push(i),
                None => anyhow::bail!("no item {id}"),
            }
        }
        v
    };
    let mut bad = 0;
    for item in &chosen {
        let mut ok = true;
        for part in &item.parts {
            let check = crate::catalog::verify_blob(part);
            if check != crate::catalog::BlobCheck::Ok {
                ok = false;
                let path = part.path.display();
                writeln!(out, "{}\tbad\t{} ({path}): {check}", item.id, part.name)?;
            }
        }
        if ok {
            writeln!(out, "{}\tok", item.id)?;
        } else {
            bad += 1;
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} of {} item(s) failed verification", chosen.len());
    }
    Ok(())
}

fn cart(store: &Store, cmd: CartCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        CartCommand::Add { user, id } => {
            store.cart_add(&user, &id)?;
            writeln!(out, "{id} is in {user}'s cart")?;
        }
        CartCommand::Remove { user, id } => {
            if !store.cart_remove(&user, &id)? {
                bail!("{id:?} is not in {user:?}'s cart");
            }
            writeln!(out, "removed {id} from {user}'s cart")?;
        }
        CartCommand::List { user, json } => {
            for e in store.cart_list(&user)? {
                let delivered = store.delivered_bytes(&user, &e.item)?;
                let size = store.item(&e.item)?.map(|i| i.size()).unwrap_or(0);
                if json {
                    let line = serde_json::json!({
                        "item": e.item,
                        "added_at_ms": e.added_at_ms,
                        "delivered_bytes": delivered,
                        "size_bytes": size,
                    });
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(
                        out,
                        "{}\t{}\t{delivered}/{size} bytes delivered",
                        e.item,
                        format_ms(e.added_at_ms)
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn format_ms(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn mint_link(store: &Store, args: &TokenArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    for (what, v) in [("--user", &args.user), ("--item", &args.item)] {
        ensure!(
            token::valid_field(v),
            "{what} {v:?}: use 1-128 of A-Z a-z 0-9 . _ @ -"
        );
    }
    if let Some(r) = &args.rate_class {
        ensure!(
            token::valid_field(r),
            "--rate-class {r:?}: use 1-128 of A-Z a-z 0-9 . _ @ -"
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let claims = token::LinkClaims {
        user: args.user.clone(),
        item: args.item.clone(),
        expires: now.saturating_add(args.ttl.as_secs().max(1)),
        rate_class: args.rate_class.clone(),
    };
    let query = token::mint(&store.secret()?, &claims);
    let base = args.base_url.as_deref().unwrap_or("").trim_end_matches('/');
    writeln!(out, "{base}/d/{}?{query}", args.item)?;
    Ok(())
}

fn serve(data_dir: Option<PathBuf>, args: &ServeArgs) -> anyhow::Result<()> {
    let flags = args.settings(data_dir);
    let mut cfg = config::resolve_with_file(&flags, args.config.as_deref())?;
    cfg.reload = args
        .config
        .clone()
        .map(|file| config::ReloadSource { flags, file });
    if let Err(e) = config::reload::apply_log_level(&cfg.log_level) {
        tracing::warn!("log_level {:?}: {e}", cfg.log_level);
    }
    let data_dir = cfg.data_dir.clone();

    // A data directory that does not exist yet, or exists but holds no database (an empty temp
    // dir), is a fresh machine: it gets the demo catalog.
    let existed = data_dir.join("weir.db").exists();
    let store = Store::open(&data_dir)
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    cfg.data_dir = store.data_dir().to_owned();
    let demo = if !existed || store.data_dir().join(demo::CREDENTIALS_FILE).exists() {
        demo::ensure_demo(&store).context("setting up the demo catalog")?
    } else {
        None
    };
    if cfg.admin_listen.is_some() && cfg.admin_token.is_none() {
        cfg.admin_token = Some(store.admin_token()?);
    }
    drop(store);
    tracing::info!(
        data_dir = %cfg.data_dir.display(),
        listen = ?cfg.listen,
        tls_listen = ?cfg.tls.as_ref().map(|t| t.listen),
        workers = cfg.workers,
        demo = demo.is_some(),
        "starting"
    );
    crate::server::run(cfg, demo)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser as _;

    use super::*;

    /// Runs a command line against `dir` and returns what it printed.
    fn run_in(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["--data-dir", dir.to_str().unwrap()];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(std::iter::once("weir").chain(full))?;
        let mut out = Vec::new();
        run(cli, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn end_to_end_in_process() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let pw = tmp.path().join("pw");
        fs::write(&pw, "hunter22\n").unwrap();
        let song = |n: &str, body: &[u8]| {
            let p = tmp.path().join(n);
            fs::write(&p, body).unwrap();
            p.to_str().unwrap().to_owned()
        };
        let (f, t1, t2) = (
            song("f.bin", b"file"),
            song("a.flac", b"aa"),
            song("b.flac", b"b"),
        );
        let pwf = pw.to_str().unwrap();

        run_in(
            &dir,
            &[
                "user",
                "add",
                "alice",
                "--password-file",
                pwf,
                "--rate",
                "2MiB",
            ],
        )
        .unwrap();
        let dup = run_in(&dir, &["user", "add", "alice", "--password-file", pwf]);
        assert!(format!("{:#}", dup.unwrap_err()).contains("already exists"));
        assert!(
            run_in(&dir, &["user", "add", "bob"]).is_err(),
            "needs a password"
        );
        run_in(&dir, &["user", "set", "alice", "--rate", "default"]).unwrap();
        assert!(
            run_in(&dir, &["user", "set", "alice"]).is_err(),
            "nothing to change"
        );
        assert!(run_in(&dir, &["user", "set", "nobody", "--rate", "1MiB"]).is_err());
        let users = run_in(&dir, &["user", "list", "--json"]).unwrap();
        let u: serde_json::Value = serde_json::from_str(users.trim()).unwrap();
        assert_eq!(u["name"], "alice");
        assert!(u["rate"].is_null());
        let store = Store::open(&dir).unwrap();
        let hash = store.user("alice").unwrap().unwrap().password_hash;
        assert!(password::verify_password("hunter22", &hash));

        run_in(&dir, &["item", "add", "file1", &f]).unwrap();
        run_in(&dir, &["album", "add", "alb", &t2, &t1]).unwrap();
        assert!(run_in(&dir, &["item", "add", "file1", &f]).is_err());
        let items = run_in(&dir, &["item", "list", "--json"]).unwrap();
        let lines: Vec<serde_json::Value> = items
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["id"], "alb");
        assert_eq!(lines[0]["kind"], "album");
        assert_eq!(lines[0]["parts"][0]["name"], "b.flac");
        assert_eq!(lines[1]["size"], 4);

        run_in(&dir, &["cart", "add", "alice", "alb"]).unwrap();
        let e = run_in(&dir, &["cart", "add", "nobody", "alb"]).unwrap_err();
        assert!(format!("{e:#}").contains("no such user"), "{e:#}");
        let e = run_in(&dir, &["cart", "add", "alice", "nothing"]).unwrap_err();
        assert!(format!("{e:#}").contains("no such item"), "{e:#}");
        let cart = run_in(&dir, &["cart", "list", "alice", "--json"]).unwrap();
        let entry: serde_json::Value = serde_json::from_str(cart.trim()).unwrap();
        assert_eq!(entry["item"], "alb");
        assert!(entry["added_at_ms"].as_u64().unwrap() > 0);
        assert!(run_in(&dir, &["cart", "list", "nobody"]).is_err());
        run_in(&dir, &["cart", "remove", "alice", "alb"]).unwrap();
        assert!(run_in(&dir, &["cart", "remove", "alice", "alb"]).is_err());
        assert_eq!(run_in(&dir, &["cart", "list", "alice"]).unwrap(), "");
        assert_eq!(run_in(&dir, &["history", "alice", "--json"]).unwrap(), "");

        let link = run_in(
            &dir,
            &[
                "token",
                "--user",
                "alice",
                "--item",
                "alb",
                "--ttl",
                "10m",
                "--base-url",
                "http://127.0.0.1:8080/",
            ],
        )
        .unwrap();
        let link = link.trim();
        let query = link
            .strip_prefix("http://127.0.0.1:8080/d/alb?")
            .unwrap_or_else(|| panic!("{link}"));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = token::verify(&store.secret().unwrap(), "alb", query, now).unwrap();
        assert_eq!(claims.user, "alice");
        assert!(claims.expires >= now + 590 && claims.expires <= now + 610);
        assert!(run_in(&dir, &["token", "--user", "a b", "--item", "alb"]).is_err());
    }
}
