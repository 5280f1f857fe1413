//! [`SharedStr`]: an immutable string whose clones share one allocation.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, Mutex};

/// An immutable, reference-counted string: the type of [`crate::Envelope`]'s header
/// fields.
///
/// A node sends many messages to the same target, from the same sender, with the same
/// type hint; with `SharedStr` each of those envelopes shares the three strings
/// instead of copying them. Cloning is one atomic increment, and the decoders hand out
/// clones of the fields they decoded last when the next header is the same. It
/// dereferences to `str`, compares and hashes like one, and converts from `&str`,
/// `String`, `Box<str>` and `Arc<str>`; [`SharedStr::from_static`] wraps a literal
/// without allocating.
///
/// ```
/// use herald_wire::SharedStr;
///
/// let a = SharedStr::from("casty://sys@127.0.0.1:25520/user/counter");
/// let b = a.clone(); // no copy of the text
/// assert!(SharedStr::ptr_eq(&a, &b));
/// assert_eq!(b, "casty://sys@127.0.0.1:25520/user/counter");
/// assert!(a.starts_with("casty://"));
/// let owned: String = b.into();
/// assert_eq!(owned.len(), 40);
/// ```
#[derive(Clone)]
pub struct SharedStr(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl SharedStr {
    /// The empty string (no allocation).
    pub const fn empty() -> Self {
        SharedStr(Repr::Static(""))
    }

    /// Wraps a string literal (or any `'static` text) without allocating; clones
    /// copy the reference.
    pub const fn from_static(s: &'static str) -> Self {
        SharedStr(Repr::Static(s))
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }

    /// A copy of this string that clones and drops without reference counting, from a
    /// process-wide table of interned strings: for text that repeats for the life of
    /// the process (actor addresses, type hints). Interned text is never freed; the
    /// table holds at most [`INTERN_BUDGET`] bytes, and once it is full this returns a
    /// plain clone of `self`.
    ///
    /// ```
    /// use herald_wire::SharedStr;
    ///
    /// let a = SharedStr::from(String::from("casty://sys@127.0.0.1:25520/user/a"));
    /// let b = SharedStr::from(String::from("casty://sys@127.0.0.1:25520/user/a"));
    /// let (ia, ib) = (a.interned(), b.interned());
    /// assert_eq!(ia, a);
    /// assert!(SharedStr::ptr_eq(&ia, &ib)); // one copy of the text
    /// ```
    pub fn interned(&self) -> SharedStr {
        if let Repr::Static(_) = self.0 {
            return self.clone();
        }
        intern(self.as_str()).map_or_else(|| self.clone(), SharedStr::from_static)
    }

    /// `true` when both refer to the same text in memory (then they are equal; the
    /// converse does not hold).
    #[inline]
    pub fn ptr_eq(a: &SharedStr, b: &SharedStr) -> bool {
        match (&a.0, &b.0) {
            (Repr::Shared(x), Repr::Shared(y)) => Arc::ptr_eq(x, y),
            (Repr::Static(x), Repr::Static(y)) => std::ptr::eq(*x, *y),
            _ => false,
        }
    }
}

/// Most bytes of text [`SharedStr::interned`] keeps for the life of the process.
pub const INTERN_BUDGET: usize = 256 * 1024;

/// The interned strings and their total size.
static INTERNED: Mutex<(Option<HashSet<&'static str>>, usize)> = Mutex::new((None, 0));

/// The interned copy of `s`, added if the budget allows.
fn intern(s: &str) -> Option<&'static str> {
    let mut table = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
    let (set, used) = &mut *table;
    let set = set.get_or_insert_with(HashSet::new);
    if let Some(found) = set.get(s) {
        return Some(found);
    }
    if *used + s.len() > INTERN_BUDGET {
        return None;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    *used += leaked.len();
    set.insert(leaked);
    Some(leaked)
}

impl Default for SharedStr {
    fn default() -> Self {
        SharedStr::empty()
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for SharedStr {
    fn as_ref(&self) -> &[u8] {
        self.as_str().as_bytes()
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl PartialEq for SharedStr {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        SharedStr::ptr_eq(self, other) || self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for SharedStr {
    // Hashes as `str` does, so `Borrow<str>` lookups in maps work.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

macro_rules! eq_with {
    ($($t:ty),*) => {$(
        impl PartialEq<$t> for SharedStr {
            fn eq(&self, other: &$t) -> bool {
                self.as_str() == &**other
            }
        }
        impl PartialEq<SharedStr> for $t {
            fn eq(&self, other: &SharedStr) -> bool {
                &**self == other.as_str()
            }
        }
    )*};
}
eq_with!(&str, String, Box<str>);

impl PartialEq<str> for SharedStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<SharedStr> for str {
    fn eq(&self, other: &SharedStr) -> bool {
        self == other.as_str()
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        if s.is_empty() {
            return SharedStr::empty();
        }
        SharedStr(Repr::Shared(Arc::from(s)))
    }
}

impl From<&String> for SharedStr {
    fn from(s: &String) -> Self {
        SharedStr::from(s.as_str())
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        if s.is_empty() {
            return SharedStr::empty();
        }
        SharedStr(Repr::Shared(Arc::from(s)))
    }
}

impl From<Box<str>> for SharedStr {
    fn from(s: Box<str>) -> Self {
        SharedStr(Repr::Shared(Arc::from(s)))
    }
}

impl From<std::borrow::Cow<'_, str>> for SharedStr {
    fn from(s: std::borrow::Cow<'_, str>) -> Self {
        match s {
            std::borrow::Cow::Borrowed(b) => SharedStr::from(b),
            std::borrow::Cow::Owned(o) => SharedStr::from(o),
        }
    }
}

impl From<Arc<str>> for SharedStr {
    fn from(s: Arc<str>) -> Self {
        SharedStr(Repr::Shared(s))
    }
}

impl From<&SharedStr> for SharedStr {
    fn from(s: &SharedStr) -> Self {
        s.clone()
    }
}

impl From<SharedStr> for String {
    fn from(s: SharedStr) -> Self {
        String::from(s.as_str())
    }
}

impl From<SharedStr> for Arc<str> {
    fn from(s: SharedStr) -> Self {
        match s.0 {
            Repr::Static(t) => Arc::from(t),
            Repr::Shared(t) => t,
        }
    }
}

impl serde::Serialize for SharedStr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for SharedStr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Borrowed when the input allows it, owned (escapes decoded) otherwise.
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(SharedStr::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn equality_ignores_sharing() {
        let a = SharedStr::from("x/y");
        let b = SharedStr::from(String::from("x/y"));
        assert!(!SharedStr::ptr_eq(&a, &b));
        assert_eq!(a, b);
        assert_ne!(a, SharedStr::from("x/z"));
        assert_eq!(a, "x/y");
        assert_eq!("x/y", a);
        assert_eq!(a, String::from("x/y"));
        assert_eq!(a.cmp(&SharedStr::from("x/z")), std::cmp::Ordering::Less);
    }

    #[test]
    fn empty_and_static_strings_do_not_allocate() {
        let a = SharedStr::from("");
        let b = SharedStr::from(String::new());
        assert!(matches!((&a.0, &b.0), (Repr::Static(_), Repr::Static(_))));
        let c = SharedStr::from_static("lit");
        assert!(SharedStr::ptr_eq(&c, &c.clone()));
        assert_eq!(c, SharedStr::from(String::from("lit")));
        assert!(a.is_empty());
        assert_eq!(SharedStr::default(), "");
    }

    #[test]
    fn interning_shares_one_copy_and_respects_the_budget() {
        let a = SharedStr::from(String::from("interning-test/a"));
        let ia = a.interned();
        assert!(matches!(ia.0, Repr::Static(_)));
        assert_eq!(ia, a);
        let again = SharedStr::from(String::from("interning-test/a")).interned();
        assert!(SharedStr::ptr_eq(&ia, &again));
        // Text larger than the whole budget is never interned: a plain clone comes back.
        let huge = SharedStr::from("x".repeat(INTERN_BUDGET + 1));
        let ih = huge.interned();
        assert!(SharedStr::ptr_eq(&ih, &huge));
    }

    #[test]
    fn map_lookup_by_str() {
        let mut m = HashMap::new();
        m.insert(SharedStr::from("k"), 1);
        assert_eq!(m.get("k"), Some(&1));
    }

    #[test]
    fn serde_round_trip_with_escapes() {
        let s = SharedStr::from("a\"b\u{e9}");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"a\\\"b\u{e9}\"");
        let back: SharedStr = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(format!("{back:?}"), "\"a\\\"b\u{e9}\"");
        assert_eq!(back.to_string(), "a\"b\u{e9}");
    }
}
