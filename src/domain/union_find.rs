//! Disjoint sets: the reference model of identities (docs/SPEC.md §4, I5). Values sent
//! together in one request end in one identity, transitively; this is the one
//! implementation that the domain's property test, the concurrency tests and the
//! load generator's model check all compare the service against.

use std::collections::HashMap;
use std::hash::Hash;

/// Disjoint sets with path halving and union by size.
#[derive(Debug, Clone)]
pub struct UnionFind<T> {
    slots: HashMap<T, usize>,
    items: Vec<T>,
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl<T> Default for UnionFind<T> {
    fn default() -> Self {
        Self {
            slots: HashMap::new(),
            items: Vec::new(),
            parent: Vec::new(),
            size: Vec::new(),
        }
    }
}

impl<T: Clone + Eq + Hash> UnionFind<T> {
    fn slot(&mut self, item: T) -> usize {
        if let Some(slot) = self.slots.get(&item) {
            return *slot;
        }
        let slot = self.items.len();
        self.items.push(item.clone());
        self.parent.push(slot);
        self.size.push(1);
        self.slots.insert(item, slot);
        slot
    }

    fn root(&mut self, mut slot: usize) -> usize {
        while self.parent[slot] != slot {
            self.parent[slot] = self.parent[self.parent[slot]];
            slot = self.parent[slot];
        }
        slot
    }

    /// Puts all `items` into one set (a single item gets a set of its own).
    pub fn join(&mut self, items: impl IntoIterator<Item = T>) {
        let mut items = items.into_iter();
        let Some(first) = items.next() else {
            return;
        };
        let first = self.slot(first);
        for item in items {
            let slot = self.slot(item);
            let (a, b) = (self.root(first), self.root(slot));
            if a != b {
                let (big, small) = if self.size[a] >= self.size[b] {
                    (a, b)
                } else {
                    (b, a)
                };
                self.parent[small] = big;
                self.size[big] += self.size[small];
            }
        }
    }

    /// A name of the set holding `item`, equal for all members; `None` if never added.
    pub fn set_of(&mut self, item: &T) -> Option<usize> {
        let slot = *self.slots.get(item)?;
        Some(self.root(slot))
    }

    /// Every item ever added, in the order first added.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// The sets, each in the order its items were first added.
    pub fn sets(&mut self) -> Vec<Vec<T>> {
        let mut sets: HashMap<usize, Vec<T>> = HashMap::new();
        for slot in 0..self.items.len() {
            let root = self.root(slot);
            sets.entry(root).or_default().push(self.items[slot].clone());
        }
        sets.into_values().collect()
    }

    /// Joins every set of `other` into this one.
    pub fn absorb(&mut self, mut other: Self) {
        for set in other.sets() {
            self.join(set);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut sets: Vec<Vec<u32>>) -> Vec<Vec<u32>> {
        for set in &mut sets {
            set.sort_unstable();
        }
        sets.sort();
        sets
    }

    #[test]
    fn joins_transitively_and_absorbs_another() {
        let mut mine = UnionFind::default();
        mine.join([1, 2]);
        mine.join([3]);
        mine.join([4, 5]);
        let mut theirs = UnionFind::default();
        theirs.join([2, 4]);
        theirs.join([6, 7]);
        mine.absorb(theirs);
        assert_eq!(mine.set_of(&1), mine.set_of(&5));
        assert_ne!(mine.set_of(&1), mine.set_of(&3));
        assert_eq!(mine.set_of(&8), None);
        assert_eq!(
            sorted(mine.sets()),
            vec![vec![1, 2, 4, 5], vec![3], vec![6, 7]]
        );
    }

    #[test]
    fn owned_items_work_too() {
        let mut sets: UnionFind<String> = UnionFind::default();
        sets.join(["a".to_owned(), "b".to_owned()]);
        sets.join(["b".to_owned(), "c".to_owned()]);
        assert_eq!(sets.set_of(&"a".to_owned()), sets.set_of(&"c".to_owned()));
        assert_eq!(sets.sets().len(), 1);
    }
}
