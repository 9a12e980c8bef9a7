//! The communication tree of a signing round.
//!
//! Members that take part are laid out in a complete `k`-ary tree in heap order: position 0
//! is the leader, the children of position `p` are positions `p·k + 1 ..= p·k + k`. Positions
//! go to the members in roster order starting after the leader and wrapping around, skipping
//! excluded members. Everyone computes the same tree from (roster size, leader, k, excluded).

use crate::mask::Mask;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    branching: usize,
    /// position -> member
    order: Vec<u32>,
    /// member -> position, `u32::MAX` for members outside the tree
    position: Vec<u32>,
}

impl Tree {
    /// The tree over every member of a roster of `members` except those in `excluded` (the
    /// leader is never excluded), with `branching` children per node (at least 1).
    pub fn new(members: usize, leader: usize, branching: usize, excluded: &Mask) -> Self {
        assert!(leader < members, "leader {leader} outside a roster of {members}");
        // More children than members is a star; clamping keeps position arithmetic in range.
        let branching = branching.clamp(1, members.max(2) - 1);
        let mut order = Vec::with_capacity(members);
        let mut position = vec![u32::MAX; members];
        for offset in 0..members {
            let member = (leader + offset) % members;
            if member != leader && excluded.contains(member) {
                continue;
            }
            position[member] = order.len() as u32;
            order.push(member as u32);
        }
        Tree { branching, order, position }
    }

    /// A star: the leader is every other member's parent.
    pub fn star(members: usize, leader: usize, excluded: &Mask) -> Self {
        Self::new(members, leader, members.max(2) - 1, excluded)
    }

    pub fn leader(&self) -> usize {
        self.order[0] as usize
    }

    pub fn roster_len(&self) -> usize {
        self.position.len()
    }

    /// How many members are in the tree.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn contains(&self, member: usize) -> bool {
        self.position.get(member).is_some_and(|&p| p != u32::MAX)
    }

    /// The members in the tree, leader first, parents before their children.
    pub fn members_top_down(&self) -> impl DoubleEndedIterator<Item = usize> + '_ {
        self.order.iter().map(|&m| m as usize)
    }

    pub fn parent(&self, member: usize) -> Option<usize> {
        let p = *self.position.get(member)? as usize;
        if p == u32::MAX as usize || p == 0 {
            return None;
        }
        Some(self.order[(p - 1) / self.branching] as usize)
    }

    pub fn children(&self, member: usize) -> Vec<usize> {
        match self.position.get(member) {
            Some(&p) if p != u32::MAX => {
                let first = p as usize * self.branching + 1;
                let end = (first + self.branching).min(self.order.len());
                (first..end).map(|q| self.order[q] as usize).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The members of the subtree rooted at `member` (itself included).
    pub fn subtree(&self, member: usize) -> Mask {
        let mut mask = Mask::empty(self.position.len());
        let Some(&p) = self.position.get(member) else {
            return mask;
        };
        if p == u32::MAX {
            return mask;
        }
        // Each level of a heap-ordered subtree is a contiguous range of positions.
        let (mut lo, mut hi) = (p as usize, p as usize);
        while lo < self.order.len() {
            for q in lo..=hi.min(self.order.len() - 1) {
                mask.insert(self.order[q] as usize);
            }
            lo = lo * self.branching + 1;
            hi = hi * self.branching + self.branching;
        }
        mask
    }

    /// The number of edges from the leader to `member` (`None` outside the tree).
    pub fn depth_of(&self, member: usize) -> Option<usize> {
        let mut p = *self.position.get(member)? as usize;
        if p == u32::MAX as usize {
            return None;
        }
        let mut depth = 0;
        while p > 0 {
            p = (p - 1) / self.branching;
            depth += 1;
        }
        Some(depth)
    }

    /// The number of edges on the longest path from the leader to a leaf.
    pub fn depth(&self) -> usize {
        // Level d + 1 starts right after the last position of level d.
        let (mut depth, mut last) = (0, 0usize);
        while last + 1 < self.order.len() {
            last = last.saturating_mul(self.branching).saturating_add(self.branching);
            depth += 1;
        }
        depth
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn subtrees_partition_the_tree(members in 1usize..300, leader_seed in any::<usize>(), branching in 1usize..20, excl in proptest::collection::vec(any::<usize>(), 0..40)) {
            let leader = leader_seed % members;
            let mut excluded = Mask::empty(members);
            for e in excl { excluded.insert(e % members); }
            let tree = Tree::new(members, leader, branching, &excluded);
            prop_assert_eq!(tree.leader(), leader);
            prop_assert_eq!(tree.subtree(leader).count(), tree.len());
            for member in tree.members_top_down() {
                let children = tree.children(member);
                prop_assert!(children.len() <= branching);
                let mut union = Mask::empty(members);
                union.insert(member);
                for &child in &children {
                    prop_assert_eq!(tree.parent(child), Some(member));
                    let sub = tree.subtree(child);
                    prop_assert!(union.is_disjoint(&sub));
                    union.union_with(&sub);
                }
                prop_assert_eq!(union, tree.subtree(member));
            }
            for m in 0..members {
                prop_assert_eq!(tree.contains(m), m == leader || !excluded.contains(m));
                if let Some(parent) = tree.parent(m) {
                    prop_assert_eq!(tree.depth_of(m), tree.depth_of(parent).map(|d| d + 1));
                }
                prop_assert!(tree.depth_of(m).is_none_or(|d| d <= tree.depth()));
            }
            prop_assert_eq!(tree.depth_of(leader), Some(0));
        }
    }

    #[test]
    fn depth_of_a_binary_tree() {
        let none = Mask::empty(7);
        assert_eq!(Tree::new(7, 0, 2, &none).depth(), 2);
        assert_eq!(Tree::new(8, 0, 2, &Mask::empty(8)).depth(), 3);
        assert_eq!(Tree::star(7, 3, &none).depth(), 1);
        assert_eq!(Tree::new(1, 0, 2, &Mask::empty(1)).depth(), 0);
    }
}
