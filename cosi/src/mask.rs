//! Participation masks: which roster members took part in a signature.
//!
//! Bit `i` (member `i` of the roster) is bit `i % 8` of byte `i / 8`, least significant
//! first. A mask for an `n`-member roster is exactly `ceil(n / 8)` bytes and every bit at
//! position `n` or above is zero, so each set of members has exactly one encoding.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("mask is {got} bytes, expected {expected} for a roster of {members} members")]
    WrongLength { got: usize, expected: usize, members: usize },
    #[error("mask sets bit {bit}, beyond the roster's {members} members")]
    BitBeyondRoster { bit: usize, members: usize },
}

/// A set of roster members, as a bitmap.
///
/// Invariant: `len` is the roster size, `bytes.len() == ceil(len / 8)`, and no bit at
/// position `len` or above is set.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Mask {
    len: usize,
    bytes: Vec<u8>,
}

impl Mask {
    /// The empty set for a roster of `members`.
    pub fn empty(members: usize) -> Self {
        Mask { len: members, bytes: vec![0; members.div_ceil(8)] }
    }

    /// Every member of a roster of `members`.
    pub fn full(members: usize) -> Self {
        let mut mask = Self::empty(members);
        for i in 0..members {
            mask.insert(i);
        }
        mask
    }

    /// Decodes a mask for a roster of `members`, checking its length and unused bits.
    pub fn from_bytes(bytes: &[u8], members: usize) -> Result<Self, MaskError> {
        let expected = members.div_ceil(8);
        if bytes.len() != expected {
            return Err(MaskError::WrongLength { got: bytes.len(), expected, members });
        }
        for bit in members..expected * 8 {
            if bytes[bit / 8] >> (bit % 8) & 1 == 1 {
                return Err(MaskError::BitBeyondRoster { bit, members });
            }
        }
        Ok(Mask { len: members, bytes: bytes.to_vec() })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The roster size this mask is for.
    pub fn members(&self) -> usize {
        self.len
    }

    /// Whether member `i` is in the set. Out-of-range members are not.
    pub fn contains(&self, i: usize) -> bool {
        i < self.len && self.bytes[i / 8] >> (i % 8) & 1 == 1
    }

    /// Adds member `i`. Panics if `i` is not a member: callers index the roster they made
    /// the mask for, never an index from the network.
    pub fn insert(&mut self, i: usize) {
        assert!(i < self.len, "member {i} outside a roster of {}", self.len);
        self.bytes[i / 8] |= 1 << (i % 8);
    }

    pub fn remove(&mut self, i: usize) {
        if i < self.len {
            self.bytes[i / 8] &= !(1 << (i % 8));
        }
    }

    /// How many members are in the set.
    pub fn count(&self) -> usize {
        self.bytes.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// The members in the set, in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.members_where(false)
    }

    /// The members not in the set, in increasing order.
    pub fn iter_absent(&self) -> impl Iterator<Item = usize> + '_ {
        self.members_where(true)
    }

    /// Members whose bit is the opposite of `flip`, skipping whole bytes that have none.
    fn members_where(&self, flip: bool) -> impl Iterator<Item = usize> + '_ {
        let len = self.len;
        self.bytes.iter().enumerate().flat_map(move |(k, &byte)| {
            let bits = if flip { !byte } else { byte };
            (0..8).filter(move |j| bits >> j & 1 == 1).map(move |j| k * 8 + j).filter(move |&i| i < len)
        })
    }

    /// Whether every member of `self` is in `other`.
    pub fn is_subset(&self, other: &Mask) -> bool {
        self.len == other.len && self.bytes.iter().zip(&other.bytes).all(|(a, b)| a & !b == 0)
    }

    /// Whether the two sets share no member.
    pub fn is_disjoint(&self, other: &Mask) -> bool {
        self.bytes.iter().zip(&other.bytes).all(|(a, b)| a & b == 0)
    }

    /// Adds every member of `other` (of the same roster size).
    pub fn union_with(&mut self, other: &Mask) {
        debug_assert_eq!(self.len, other.len);
        for (a, b) in self.bytes.iter_mut().zip(&other.bytes) {
            *a |= b;
        }
    }

    /// The members in both sets.
    pub fn intersection(&self, other: &Mask) -> Mask {
        debug_assert_eq!(self.len, other.len);
        Mask { len: self.len, bytes: self.bytes.iter().zip(&other.bytes).map(|(a, b)| a & b).collect() }
    }
}

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mask({}/{}:", self.count(), self.len)?;
        for i in 0..self.len.min(64) {
            write!(f, "{}", if self.contains(i) { '1' } else { '0' })?;
        }
        if self.len > 64 {
            write!(f, "...")?;
        }
        write!(f, ")")
    }
}

/// On the wire a mask is its bytes (postcard: varint length, then the bytes); its roster
/// size comes from context, so decoding goes through [`WireMask::into_mask`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMask(pub Vec<u8>);

impl WireMask {
    pub fn into_mask(self, members: usize) -> Result<Mask, MaskError> {
        Mask::from_bytes(&self.0, members)
    }
}

impl From<&Mask> for WireMask {
    fn from(mask: &Mask) -> Self {
        WireMask(mask.bytes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_lsb_first() {
        let mut mask = Mask::empty(10);
        mask.insert(0);
        mask.insert(9);
        assert_eq!(mask.as_bytes(), &[0b0000_0001, 0b0000_0010]);
    }

    #[test]
    fn bits_beyond_the_roster_are_refused() {
        assert_eq!(
            Mask::from_bytes(&[0xff, 0x04], 10).unwrap_err(),
            MaskError::BitBeyondRoster { bit: 10, members: 10 }
        );
        assert_eq!(
            Mask::from_bytes(&[0xff], 10).unwrap_err(),
            MaskError::WrongLength { got: 1, expected: 2, members: 10 }
        );
    }

    proptest! {
        #[test]
        fn roundtrip(members in 1usize..200, picks in proptest::collection::vec(any::<usize>(), 0..50)) {
            let mut mask = Mask::empty(members);
            for p in &picks { mask.insert(p % members); }
            let decoded = Mask::from_bytes(mask.as_bytes(), members).unwrap();
            prop_assert_eq!(&decoded, &mask);
            prop_assert_eq!(decoded.iter().count(), mask.count());
            prop_assert_eq!(decoded.iter().count() + decoded.iter_absent().count(), members);
            let present: Vec<usize> = (0..members).filter(|&i| mask.contains(i)).collect();
            let absent: Vec<usize> = (0..members).filter(|&i| !mask.contains(i)).collect();
            prop_assert_eq!(mask.iter().collect::<Vec<_>>(), present);
            prop_assert_eq!(mask.iter_absent().collect::<Vec<_>>(), absent);
        }
    }
}
