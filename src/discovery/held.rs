//! Which keys some task holds now: a set shared between the tasks that
//! hold a ring link (each with a [`Mark`]) and the browse that asks
//! whether a node is linked. Counted, because two tasks may hold the same
//! key for a moment (a watch aborted while its replacement starts, a
//! watcher's new link accepted before its old one closed), and a mark
//! leaves the set when its task ends, however it ends.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// The keys held, by how many marks hold each.
#[derive(Debug)]
pub struct Held<K>(Arc<Mutex<HashMap<K, usize>>>);

// Derived, these would ask `K: Default` and `K: Clone` of the keys.
impl<K> Default for Held<K> {
    fn default() -> Held<K> {
        Held(Arc::default())
    }
}

impl<K> Clone for Held<K> {
    fn clone(&self) -> Held<K> {
        Held(self.0.clone())
    }
}

impl<K: Hash + Eq + Clone> Held<K> {
    /// Whether any mark holds `key`.
    pub fn contains<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.lock().contains_key(key)
    }

    /// A mark for `key`, not holding it yet.
    pub fn mark(&self, key: K) -> Mark<K> {
        Mark {
            held: self.clone(),
            key,
            holds: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One task's say about its key in a [`Held`]: it lets go when dropped
/// (an aborted task drops it).
#[derive(Debug)]
pub struct Mark<K: Hash + Eq + Clone> {
    held: Held<K>,
    key: K,
    holds: bool,
}

impl<K: Hash + Eq + Clone> Mark<K> {
    /// Holds the key, or lets it go.
    pub fn set(&mut self, holds: bool) {
        if holds == self.holds {
            return;
        }
        self.holds = holds;
        let mut keys = self.held.lock();
        match keys.entry(self.key.clone()) {
            Entry::Vacant(slot) if holds => {
                slot.insert(1);
            }
            Entry::Occupied(mut slot) if holds => *slot.get_mut() += 1,
            Entry::Occupied(mut slot) => {
                *slot.get_mut() -= 1;
                if *slot.get() == 0 {
                    slot.remove();
                }
            }
            Entry::Vacant(_) => {}
        }
    }
}

impl<K: Hash + Eq + Clone> Drop for Mark<K> {
    fn drop(&mut self) {
        self.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_while_any_mark_holds_it() {
        let held = Held::default();
        let mut old = held.mark("n1");
        let mut new = held.mark("n1");
        assert!(!held.contains("n1"), "a mark holds nothing until set");
        old.set(true);
        new.set(true);
        old.set(true);
        drop(old);
        assert!(held.contains("n1"), "the other mark still holds it");
        new.set(false);
        assert!(!held.contains("n1"));
        new.set(true);
        drop(new);
        assert!(!held.contains("n1"), "a dropped mark lets go");
    }
}
