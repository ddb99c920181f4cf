//! Weighted max-min fair division ("water filling"), the one policy function of the allocator.

use std::cmp::Ordering;

/// A claim on a budget: at most `cap` bytes, share proportional to `weight` (≥ 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Most bytes this claim may receive.
    pub cap: u64,
    /// Relative share (0 counts as 1).
    pub weight: u64,
}

/// Splits `budget` among `claims` weighted max-min fairly: no claim gets more than its cap,
/// and a claim below its cap gets at least its weighted share of what the capped claims left.
/// Writes the shares to `out` (same length as `claims`) and returns what nobody could take.
///
/// Rounding is by floor division in order of `cap / weight`, so two uncapped claims of equal
/// weight differ by at most one byte; `rotate` breaks ties so the odd byte moves around.
/// `order` is scratch space, reused to avoid allocating every epoch.
pub fn water_fill(
    budget: u64,
    claims: &[Claim],
    rotate: usize,
    order: &mut Vec<usize>,
    out: &mut [u64],
) -> u64 {
    assert_eq!(claims.len(), out.len());
    let n = claims.len();
    order.clear();
    order.extend(0..n);
    let key = |i: usize| (i + rotate) % n.max(1);
    order.sort_unstable_by(|&a, &b| {
        let (ca, cb) = (claims[a], claims[b]);
        let lhs = u128::from(ca.cap) * u128::from(cb.weight.max(1));
        let rhs = u128::from(cb.cap) * u128::from(ca.weight.max(1));
        match lhs.cmp(&rhs) {
            Ordering::Equal => key(a).cmp(&key(b)),
            o => o,
        }
    });
    let mut left = budget;
    let mut weight_left: u128 = claims.iter().map(|c| u128::from(c.weight.max(1))).sum();
    for &i in order.iter() {
        let w = u128::from(claims[i].weight.max(1));
        let fair = u64::try_from(u128::from(left) * w / weight_left).unwrap_or(u64::MAX);
        let give = fair.min(claims[i].cap);
        out[i] = give;
        left -= give;
        weight_left -= w;
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(budget: u64, claims: &[(u64, u64)]) -> (Vec<u64>, u64) {
        let claims: Vec<Claim> = claims
            .iter()
            .map(|&(cap, weight)| Claim { cap, weight })
            .collect();
        let mut out = vec![0; claims.len()];
        let left = water_fill(budget, &claims, 0, &mut Vec::new(), &mut out);
        (out, left)
    }

    #[test]
    fn equal_split_with_a_capped_claim() {
        assert_eq!(
            fill(100, &[(10, 1), (u64::MAX, 1), (u64::MAX, 1)]),
            (vec![10, 45, 45], 0)
        );
    }

    #[test]
    fn weights() {
        assert_eq!(fill(90, &[(u64::MAX, 1), (u64::MAX, 2)]), (vec![30, 60], 0));
    }

    #[test]
    fn all_capped_leaves_the_rest() {
        assert_eq!(fill(100, &[(10, 1), (20, 5)]), (vec![10, 20], 70));
    }

    #[test]
    fn rounding_within_one_byte() {
        let (out, left) = fill(10, &[(u64::MAX, 1); 3]);
        assert_eq!(left, 0);
        assert_eq!(out.iter().sum::<u64>(), 10);
        assert!(out.iter().max().unwrap() - out.iter().min().unwrap() <= 1);
    }
}
