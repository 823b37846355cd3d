//! A bounded set of instance names, the oldest forgotten first: what a
//! node remembers of a stranger's floods stays within bounds however many
//! names the stranger makes up.

use std::collections::{HashSet, VecDeque};

/// Names remembered; the oldest is forgotten first.
pub const MEMORY: usize = 4096;

/// The names, in a set and in the order they came.
#[derive(Debug, Default)]
pub struct Names {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Names {
    /// Whether `name` is remembered.
    pub fn contains(&self, name: &str) -> bool {
        self.set.contains(name)
    }

    /// Remembers `name`, forgetting the oldest when full.
    pub fn insert(&mut self, name: &str) {
        if self.set.contains(name) {
            return;
        }
        if self.order.len() >= MEMORY {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.set.insert(name.to_owned());
        self.order.push_back(name.to_owned());
    }

    /// How many are remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// The names, oldest first.
    pub fn into_vec(self) -> Vec<String> {
        self.order.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_the_oldest_go_first() {
        let mut n = Names::default();
        for i in 0..3 * MEMORY {
            n.insert(&format!("fake-{i}"));
            n.insert(&format!("fake-{i}"));
        }
        assert_eq!(n.len(), MEMORY);
        assert_eq!(n.set.len(), MEMORY);
        assert!(n.contains(&format!("fake-{}", 3 * MEMORY - 1)));
        assert!(!n.contains("fake-0"));
        assert_eq!(n.into_vec()[0], format!("fake-{}", 2 * MEMORY));
    }
}
