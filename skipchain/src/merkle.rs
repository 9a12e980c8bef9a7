//! Merkle trees of RFC 6962's shape (the largest power of two of leaves left, the rest
//! right) over leaf hashes, each kind of tree with its own node hash (its own tag): the
//! timeline's head sets and a release's rebuild records (`chainiac-release`).

/// A kind of tree's inner node hash, `H(tag || left || right)`.
pub type NodeHash = fn(&[u8; 32], &[u8; 32]) -> [u8; 32];

/// The largest power of two smaller than `n` (n >= 2); in u64 so that a proof's size is
/// never truncated, whatever the platform.
pub fn split(n: u64) -> u64 {
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// The levels over `leaves`: `levels[h][i]` is the root of the perfect subtree over leaves
/// `i·2^h .. (i+1)·2^h`, for every aligned power-of-two range that fits, so that a root or
/// an audit path takes O(log² n) hashes instead of O(n).
pub fn levels(leaves: Vec<[u8; 32]>, node: NodeHash) -> Vec<Vec<[u8; 32]>> {
    let mut levels = vec![leaves];
    while levels.last().is_some_and(|level| level.len() >= 2) {
        let below = levels.last().expect("checked above");
        let above = below.chunks_exact(2).map(|pair| node(&pair[0], &pair[1])).collect();
        levels.push(above);
    }
    levels
}

/// The root over leaves `lo..hi` (non-empty) of the tree whose [`levels`] these are. Every
/// left part of a split is an aligned power of two, so the recursion only descends on the
/// right.
pub fn subtree(levels: &[Vec<[u8; 32]>], lo: usize, hi: usize, node: NodeHash) -> [u8; 32] {
    let n = hi - lo;
    if n.is_power_of_two() && lo % n == 0 {
        return levels[n.trailing_zeros() as usize][lo / n];
    }
    let k = split(n as u64) as usize;
    node(&subtree(levels, lo, lo + k, node), &subtree(levels, lo + k, hi, node))
}

/// The audit path of leaf `position` (below `size`, the tree's leaves): the sibling
/// subtrees' roots, from the leaf up.
pub fn path(levels: &[Vec<[u8; 32]>], size: usize, position: usize, node: NodeHash) -> Vec<[u8; 32]> {
    let (mut lo, mut hi) = (0usize, size);
    let mut path = Vec::new();
    while hi - lo > 1 {
        let k = split((hi - lo) as u64) as usize;
        if position - lo < k {
            path.push(subtree(levels, lo + k, hi, node));
            hi = lo + k;
        } else {
            path.push(subtree(levels, lo, lo + k, node));
            lo += k;
        }
    }
    path.reverse();
    path
}

/// The root that `leaf` at `position` of a tree of `size` leaves and its audit `path`
/// give; `Err(expected)` when the path does not have the `expected` length that position
/// needs. The caller checks `position < size`.
pub fn root_from_path(
    leaf: [u8; 32],
    position: u64,
    size: u64,
    path: &[[u8; 32]],
    node: NodeHash,
) -> Result<[u8; 32], usize> {
    // Recompute the splits top-down to know, at each level, which side the leaf is on.
    let (mut lo, mut hi) = (0u64, size);
    let mut sides = Vec::new();
    while hi - lo > 1 {
        let k = split(hi - lo);
        let left = position - lo < k;
        sides.push(left);
        if left {
            hi = lo + k;
        } else {
            lo += k;
        }
    }
    if sides.len() != path.len() {
        return Err(sides.len());
    }
    let mut hash = leaf;
    for (sibling, leaf_is_left) in path.iter().zip(sides.iter().rev()) {
        hash = if *leaf_is_left { node(&hash, sibling) } else { node(sibling, &hash) };
    }
    Ok(hash)
}
