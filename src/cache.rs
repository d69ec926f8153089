//! The small-file cache of `lameduck serve`: a hot file is answered from memory with headers
//! prepared once, no system call at all, and revalidated (the whole path walked again, every
//! component checked, the bytes read again) at most [`VALIDITY`] after it was last checked.
//! So a change on disk (a file rewritten, replaced by rename, deleted, a directory swapped for
//! a symbolic link that leads out of the root) is served within [`VALIDITY`], never later.
//! A hot entry is read again in the background once it is half that old
//! ([`Entry::claim_refresh`]), so its requests never find it stale and never wait on the disk.
//! Memory is bounded by `--cache-size`; `0` turns the cache off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::HeaderValue;

/// How long a cached file is served without looking at the disk: the freshness bound.
pub(crate) const VALIDITY: Duration = Duration::from_millis(200);
/// Largest file kept in the cache.
pub(crate) const MAX_FILE: u64 = 256 * 1024;
/// Bookkeeping counted per entry on top of its bytes.
const ENTRY_OVERHEAD: usize = 256;
/// Counted per representation for its two prepared HTTP/1.1 heads ([`Variant::wire_head`],
/// [`Variant::not_modified_head`]), on top of the ETag (in both) and the content type (in
/// the `200`'s) they hold: about 156 and 126 bytes of names, dates and the other headers.
const WIRE_HEAD_OVERHEAD: usize = 288;

/// One representation of a cached file: the file itself, or a precompressed sibling.
#[derive(Debug)]
pub(crate) struct Variant {
    /// `None` for the file itself, `Some("br")` / `Some("gzip")` for a sibling.
    pub(crate) encoding: Option<&'static str>,
    pub(crate) bytes: Bytes,
    pub(crate) etag: String,
    pub(crate) modified: Option<SystemTime>,
    pub(crate) last_modified: Option<String>,
    /// The HTTP/1.1 heads of this representation's `200` and `304`, made on the first
    /// request that needs each: what the shortcut writes ([`crate::files::FileShortcut`]).
    pub(crate) heads: PreparedHeads,
}

/// A representation's prepared HTTP/1.1 heads; empty until the shortcut needs them.
#[derive(Debug, Default)]
pub(crate) struct PreparedHeads {
    ok: OnceLock<Bytes>,
    not_modified: OnceLock<Bytes>,
}

impl Variant {
    /// The prepared head of this representation's whole `200`, made by `make` the first time.
    pub(crate) fn wire_head(&self, make: impl FnOnce() -> Bytes) -> &Bytes {
        self.heads.ok.get_or_init(make)
    }

    /// The prepared head of its `304 Not Modified`, made by `make` the first time.
    pub(crate) fn not_modified_head(&self, make: impl FnOnce() -> Bytes) -> &Bytes {
        self.heads.not_modified.get_or_init(make)
    }
}

/// A cached URL: its representations and their content type.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) content_type: HeaderValue,
    pub(crate) variants: Vec<Variant>,
    checked: Instant,
    /// Set by the one caller that refreshes this entry ahead of its expiry.
    refresh_claimed: AtomicBool,
    size: usize,
}

impl Entry {
    pub(crate) fn new(content_type: HeaderValue, variants: Vec<Variant>) -> Entry {
        // Each representation: its bytes, its ETag and dates, and its two prepared heads.
        let size = variants
            .iter()
            .map(|v| {
                v.bytes.len()
                    + 3 * v.etag.len()
                    + 64
                    + content_type.len()
                    + WIRE_HEAD_OVERHEAD
                    // A sibling's 200 says `content-encoding: …`.
                    + v.encoding.map_or(0, |e| 20 + e.len())
                    + std::mem::size_of::<PreparedHeads>()
            })
            .sum::<usize>()
            + ENTRY_OVERHEAD;
        Entry {
            content_type,
            variants,
            checked: Instant::now(),
            refresh_claimed: AtomicBool::new(false),
            size,
        }
    }

    /// Whether the caller is the one to refresh this entry ahead of its expiry: `true` once,
    /// to the first caller after half of [`VALIDITY`]. A hot entry refreshed in time (its
    /// replacement is checked anew) never goes stale, so its requests never wait on the
    /// disk; one not refreshed in time expires as any other, and the freshness bound holds.
    pub(crate) fn claim_refresh(&self) -> bool {
        self.checked.elapsed() >= VALIDITY / 2
            // Relaxed: the flag only elects one refresher; the entry itself never changes.
            && !self.refresh_claimed.load(Ordering::Relaxed)
            && !self.refresh_claimed.swap(true, Ordering::Relaxed)
    }

    /// The representation for `encoding` (`None`: the file itself).
    pub(crate) fn variant(&self, encoding: Option<&str>) -> Option<&Variant> {
        self.variants.iter().find(|v| v.encoding == encoding)
    }
}

/// The cache: URL path → entry, bounded in bytes.
#[derive(Debug)]
pub(crate) struct FileCache {
    map: RwLock<HashMap<String, Arc<Entry>>>,
    capacity: usize,
    used: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl FileCache {
    /// A cache of at most `capacity` bytes; `None` when `capacity` is 0 (no cache).
    pub(crate) fn new(capacity: usize) -> Option<FileCache> {
        (capacity > 0).then(|| FileCache {
            map: RwLock::new(HashMap::new()),
            capacity,
            used: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The entry for `key` if it was checked less than [`VALIDITY`] ago. A miss (absent or
    /// stale) is counted; the caller then goes to the disk and [`insert`](Self::insert)s.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let found = self.fresh(key, |_| true);
        // Relaxed: statistics.
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// As [`get`](Self::get), but a hit is counted only if `take` accepts the entry, and a
    /// miss is not counted at all: for a lookup that, when it does not answer, is followed
    /// by the ordinary one (the shortcut's, before the service's).
    pub(crate) fn get_if(
        &self,
        key: &str,
        take: impl FnOnce(&Entry) -> bool,
    ) -> Option<Arc<Entry>> {
        let found = self.fresh(key, take);
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// The entry for `key` if it is fresh and `take` accepts it; nothing counted.
    fn fresh(&self, key: &str, take: impl FnOnce(&Entry) -> bool) -> Option<Arc<Entry>> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .filter(|e| e.checked.elapsed() < VALIDITY && take(e))
            .cloned()
    }

    /// Keeps `entry` for `key`, evicting the least recently checked entries to stay within
    /// the capacity. An entry larger than the whole cache is not kept.
    pub(crate) fn insert(&self, key: &str, entry: Arc<Entry>) {
        let size = entry.size + key.len();
        if size > self.capacity {
            self.remove(key);
            return;
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = map.insert(key.to_owned(), entry) {
            self.used.fetch_sub(old.size + key.len(), Ordering::Relaxed);
        }
        self.used.fetch_add(size, Ordering::Relaxed);
        while self.used.load(Ordering::Relaxed) > self.capacity {
            let Some(oldest) = map
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .min_by_key(|(_, e)| e.checked)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(old) = map.remove(&oldest) {
                self.used
                    .fetch_sub(old.size + oldest.len(), Ordering::Relaxed);
            }
        }
    }

    /// Forgets `key` (it is no longer a file that can be cached).
    pub(crate) fn remove(&self, key: &str) {
        // A file that is never cached is "removed" on each of its requests: the shared lock
        // tells, without holding up every other lookup behind the exclusive one.
        if !self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
        {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = map.remove(key) {
            self.used.fetch_sub(old.size + key.len(), Ordering::Relaxed);
        }
    }

    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub(crate) fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn entries(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Arc<Entry> {
        Arc::new(Entry::new(
            HeaderValue::from_static("text/plain"),
            vec![Variant {
                encoding: None,
                bytes: Bytes::from(vec![0u8; n]),
                etag: "\"x\"".into(),
                modified: None,
                last_modified: None,
                heads: PreparedHeads::default(),
            }],
        ))
    }

    #[test]
    fn stays_within_its_capacity_and_evicts_the_oldest() {
        // Room for two entries and a half.
        let size = entry(1_000).size;
        let cache = FileCache::new(size * 5 / 2).unwrap();
        cache.insert("/a", entry(1_000));
        std::thread::sleep(Duration::from_millis(2));
        cache.insert("/b", entry(1_000));
        std::thread::sleep(Duration::from_millis(2));
        cache.insert("/c", entry(1_000));
        assert!(cache.used() <= size * 5 / 2);
        assert!(cache.get("/a").is_none(), "the oldest is evicted");
        assert!(cache.get("/b").is_some() && cache.get("/c").is_some());
        // Too large for the whole cache: not kept.
        cache.insert("/huge", entry(size * 3));
        assert!(cache.get("/huge").is_none());
        cache.remove("/b");
        assert_eq!(cache.entries(), 1);
        assert!(FileCache::new(0).is_none());
    }

    #[test]
    fn an_entry_goes_stale_after_the_validity() {
        let cache = FileCache::new(100_000).unwrap();
        cache.insert("/a", entry(10));
        assert!(cache.get("/a").is_some());
        std::thread::sleep(VALIDITY + Duration::from_millis(20));
        assert!(cache.get("/a").is_none());
        assert_eq!((cache.hits(), cache.misses()), (1, 1));
    }

    #[test]
    fn one_caller_is_elected_to_refresh_an_entry_past_half_its_validity() {
        let e = entry(10);
        assert!(!e.claim_refresh(), "a new entry needs no refresh");
        std::thread::sleep(VALIDITY / 2 + Duration::from_millis(10));
        assert!(
            e.claim_refresh(),
            "the first caller past half the validity refreshes"
        );
        assert!(!e.claim_refresh(), "and only the first");
    }
}
