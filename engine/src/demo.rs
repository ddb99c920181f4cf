//! The embedded default: what `weir serve` creates on a fresh data directory so it works at once.
//!
//! On a data directory with no users and no items, [`ensure_demo`] creates:
//!
//! - `demo-64m`: a 64 MiB file of incompressible pseudo-random bytes (SHA-256
//!   [`DEMO_64M_SHA256`] on every machine, so a load generator can verify what it assembled);
//! - `demo-4k`: a 4 KiB file;
//! - `demo-album`: an album of three tracks, `track01.bin` to `track03.bin`, 1 to 3 MiB each, with
//!   sizes that are not multiples of a page;
//! - the user `demo` with a random 16-character password, and all three items in its cart.
//!
//! The password is kept in `<data>/demo-credentials` (`demo:PASSWORD`, mode 0600) so that every
//! later start on that directory can print it again; the presence of that file is what marks a
//! data directory as a demo. On each start the demo is repaired: missing items are recreated and
//! the items are put back in the demo user's cart (a completed download takes them out), so the
//! demo always works. A real deployment has no such file and is never touched.
//!
//! All bytes come from SplitMix64 streams with fixed seeds: deterministic, fast, and
//! incompressible enough that compression or deduplication on the path cannot flatter a benchmark.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use rand::distributions::{Alphanumeric, DistString};

use crate::catalog;
use crate::password;
#[cfg(test)]
use crate::storage::Store;
use crate::storage::{create_private_file, valid_id, Blob, ItemKind, Storage};

/// SHA-256 of the `demo-64m` item's bytes; a test checks the generator still produces it.
pub const DEMO_64M_SHA256: &str =
    "025e33041f5503826959dde22766289805f81fcf3e5625eac764a9a88e4b9f2e";
/// The demo user's name.
pub const DEMO_USER: &str = "demo";
/// The demo items, in the order they are put in the cart.
pub const DEMO_ITEMS: [&str; 3] = ["demo-64m", "demo-4k", "demo-album"];
/// Name of the file in the data directory that holds the demo credentials.
pub const CREDENTIALS_FILE: &str = "demo-credentials";

/// The demo user's credentials and items, for the server to print at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemoInfo {
    pub user: String,
    pub password: String,
    pub items: Vec<String>,
}

impl DemoInfo {
    /// What to print at start so a person can try the demo at once, given the server's base URL
    /// (`http://127.0.0.1:8080`): the credentials and a `curl` line per item.
    pub fn banner(&self, base_url: &str) -> String {
        let base = base_url.trim_end_matches('/');
        let mut s = format!(
            "demo catalog: user {:?}, password {:?}\n",
            self.user, self.password
        );
        for item in &self.items {
            s.push_str(&format!(
                "  curl -u {}:{} -o {item} {base}/d/{item}\n",
                self.user, self.password
            ));
        }
        s
    }
}

/// One generated file: its name, size and SplitMix64 seed.
struct Spec {
    name: &'static str,
    size: u64,
    seed: u64,
}

/// "weirdemo": the seed of `demo-64m`; the other files use the next seeds.
const SEED: u64 = 0x7765_6972_6465_6d6f;

const FILE_64M: Spec = Spec {
    name: "demo-64m.bin",
    size: 64 << 20,
    seed: SEED,
};
const FILE_4K: Spec = Spec {
    name: "demo-4k.bin",
    size: 4096,
    seed: SEED + 1,
};
const TRACKS: [Spec; 3] = [
    Spec {
        name: "track01.bin",
        size: (1 << 20) + 4321,
        seed: SEED + 2,
    },
    Spec {
        name: "track02.bin",
        size: (2 << 20) + 1234,
        seed: SEED + 3,
    },
    Spec {
        name: "track03.bin",
        size: (3 << 20) - 777,
        seed: SEED + 4,
    },
];

/// The parts of each demo item, matching [`DEMO_ITEMS`].
fn item_specs() -> [(&'static str, ItemKind, &'static [Spec]); 3] {
    [
        (
            DEMO_ITEMS[0],
            ItemKind::File,
            std::slice::from_ref(&FILE_64M),
        ),
        (
            DEMO_ITEMS[1],
            ItemKind::File,
            std::slice::from_ref(&FILE_4K),
        ),
        (DEMO_ITEMS[2], ItemKind::Album, &TRACKS),
    ]
}

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state, one add and two multiplies per word.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Writes `size` bytes of the stream seeded with `seed`: the words in little-endian order,
/// the last one cut short when `size` is not a multiple of 8.
fn generate(seed: u64, size: u64, out: &mut impl Write) -> io::Result<()> {
    let mut rng = SplitMix64(seed);
    let mut buf = [0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for word in buf[..n].chunks_mut(8) {
            let bytes = rng.next_u64().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Makes sure the demo exists when this data directory is (or is about to become) a demo.
///
/// - `<data>/demo-credentials` exists: repair the demo (recreate missing items, put the items back
///   in the cart) and return its credentials.
/// - Otherwise, no users and no items: create the demo and its credentials file, return them.
/// - Otherwise (a real deployment): change nothing, return `None`.
pub fn ensure_demo(store: &dyn Storage) -> anyhow::Result<Option<DemoInfo>> {
    let creds = store.data_dir().join(CREDENTIALS_FILE);
    if !creds.exists() {
        if !(store.users()?.is_empty() && store.items()?.is_empty()) {
            return Ok(None);
        }
        let password = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 16);
        // The credentials are written before anything else, so a crash half-way through leaves
        // a directory the next start recognises as a demo and finishes.
        create_private_file(&creds, format!("{DEMO_USER}:{password}\n").as_bytes())?;
        tracing::info!(data_dir = %store.data_dir().display(), "creating the demo catalog");
    }
    let (user, password) = read_credentials(&creds)?;
    repair(store, &user, &password)?;
    Ok(Some(DemoInfo {
        user,
        password,
        items: DEMO_ITEMS.iter().map(|s| s.to_string()).collect(),
    }))
}

fn read_credentials(path: &Path) -> anyhow::Result<(String, String)> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    match line.split_once(':') {
        Some((user, password)) if valid_id(user) && !password.is_empty() => {
            Ok((user.to_owned(), password.to_owned()))
        }
        _ => bail!("{}: expected one line USER:PASSWORD", path.display()),
    }
}

/// Creates whatever part of the demo is missing and refills the cart.
fn repair(store: &dyn Storage, user: &str, password: &str) -> anyhow::Result<()> {
    let mut scratch: Option<Scratch> = None;
    for (id, kind, specs) in item_specs() {
        if store.item(id)?.is_some() {
            continue;
        }
        if scratch.is_none() {
            scratch = Some(Scratch::new(store.data_dir())?);
        }
        let dir = &scratch.as_ref().expect("just created").0;
        let parts = specs
            .iter()
            .map(|spec| make_blob(store, dir, spec))
            .collect::<anyhow::Result<Vec<Blob>>>()?;
        store
            .add_item(id, kind, &parts)
            .with_context(|| format!("adding demo item {id}"))?;
        tracing::info!(item = id, "created demo item");
    }
    drop(scratch);

    match store.user(user)? {
        None => {
            let hash = password::hash_password(password)?;
            store.add_user(user, &hash, None)?;
        }
        Some(rec) => {
            if !password::verify_password(password, &rec.password_hash) {
                tracing::warn!(
                    user,
                    "the password in {CREDENTIALS_FILE} no longer matches the demo user's"
                );
            }
        }
    }
    for id in DEMO_ITEMS {
        if !store.cart_contains(user, id)? {
            store.cart_add(user, id)?;
        }
    }
    Ok(())
}

/// Generates one demo file into `dir` and imports it into the content store.
fn make_blob(store: &dyn Storage, dir: &Path, spec: &Spec) -> anyhow::Result<Blob> {
    let src = dir.join(spec.name);
    let file = fs::File::create(&src).with_context(|| format!("creating {}", src.display()))?;
    let mut out = BufWriter::new(file);
    generate(spec.seed, spec.size, &mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("writing {}", src.display()))?;
    drop(out);
    let blob = catalog::import_file(&store.content_dir(), &src)?;
    fs::remove_file(&src).with_context(|| format!("removing {}", src.display()))?;
    Ok(blob)
}

/// A scratch directory inside the data directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(data_dir: &Path) -> anyhow::Result<Scratch> {
        let dir = data_dir.join(format!(".demo-{:016x}", rand::random::<u64>()));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Hashes what `generate` writes, without a file.
    struct HashWriter(Sha256);
    impl Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn generator_matches_the_published_hash() {
        let mut h = HashWriter(Sha256::new());
        generate(FILE_64M.seed, FILE_64M.size, &mut h).unwrap();
        assert_eq!(hex::encode(h.0.finalize()), DEMO_64M_SHA256);
    }

    #[test]
    fn generator_handles_partial_words() {
        let mut a = Vec::new();
        generate(7, 13, &mut a).unwrap();
        let mut b = Vec::new();
        generate(7, 16, &mut b).unwrap();
        assert_eq!(a.len(), 13);
        assert_eq!(
            a[..],
            b[..13],
            "a shorter stream is a prefix of a longer one"
        );
        let mut c = Vec::new();
        generate(8, 16, &mut c).unwrap();
        assert_ne!(b, c);
    }

    #[test]
    fn demo_is_created_once_then_repaired_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let info = ensure_demo(&store)
            .unwrap()
            .expect("fresh directory gets a demo");
        assert_eq!(info.user, DEMO_USER);
        assert_eq!(info.password.len(), 16);
        assert!(info.password.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(info.items, DEMO_ITEMS);

        let big = store.item("demo-64m").unwrap().unwrap();
        assert_eq!(big.parts[0].sha256, DEMO_64M_SHA256);
        assert_eq!(big.parts[0].size, 64 << 20);
        assert_eq!(store.item("demo-4k").unwrap().unwrap().size(), 4096);
        let album = store.item("demo-album").unwrap().unwrap();
        assert_eq!(album.kind, ItemKind::Album);
        let names: Vec<_> = album.parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["track01.bin", "track02.bin", "track03.bin"]);
        let user = store.user(DEMO_USER).unwrap().unwrap();
        assert!(password::verify_password(
            &info.password,
            &user.password_hash
        ));
        assert_eq!(store.cart_list(DEMO_USER).unwrap().len(), 3);
        let creds = store.data_dir().join(CREDENTIALS_FILE);
        assert_eq!(
            fs::read_to_string(&creds).unwrap(),
            format!("demo:{}\n", info.password)
        );

        // A later start: same credentials, and what completion took out of the cart is back.
        assert!(store.cart_remove(DEMO_USER, "demo-album").unwrap());
        let again = ensure_demo(&store).unwrap().unwrap();
        assert_eq!(again, info);
        assert!(store.cart_contains(DEMO_USER, "demo-album").unwrap());
        // No scratch files left in the data directory.
        let leftovers: Vec<_> = fs::read_dir(store.data_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn banner_shows_credentials_and_urls() {
        let info = DemoInfo {
            user: "demo".into(),
            password: "pw".into(),
            items: vec!["demo-4k".into()],
        };
        let b = info.banner("http://127.0.0.1:8080/");
        assert!(b.contains("password \"pw\""), "{b}");
        assert!(
            b.contains("curl -u demo:pw -o demo-4k http://127.0.0.1:8080/d/demo-4k"),
            "{b}"
        );
    }

    #[test]
    fn real_deployment_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        store.add_user("alice", "hash", None).unwrap();
        assert_eq!(ensure_demo(&store).unwrap(), None);
        assert!(store.items().unwrap().is_empty());
        assert!(!tmp.path().join(CREDENTIALS_FILE).exists());
    }
}
