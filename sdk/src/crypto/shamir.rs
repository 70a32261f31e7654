//! Shamir sharing of the root key over GF(256) (vsss-rs, constant time).
//!
//! Shares are a deterministic function of (root key, n, t): the polynomial
//! coefficients come from a PRF keyed by the root key, so every replica that
//! holds the key produces the very same shares. A leader change therefore
//! never hands keepers shares of two different polynomials, and re-sending
//! a share is idempotent. Anyone with fewer than t shares still learns
//! nothing, as long as HMAC-SHA256 is a PRF.
//!
//! Combining never trusts its result: [`recover`] accepts the rebuilt key
//! only if it matches the committed [`KeyCheck`].

use std::convert::Infallible;
use std::fmt;
use std::num::NonZeroU8;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use vsss_rs::Gf256;
use zeroize::{Zeroize, Zeroizing};

use super::{CryptoError, KeyCheck, RootKey, SecretBytes};

const COEFFICIENT_LABEL: &[u8] = b"spike/shamir/coefficients/v1";

/// Most shares a key can be split into (GF(256) has 255 non-zero points).
pub const SHARES_MAX: u8 = 255;

/// The x-coordinate of a share: 1 to 255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShareIndex(NonZeroU8);

impl ShareIndex {
    /// Fails for 0, which would be the secret itself.
    pub fn new(index: u8) -> Result<Self, CryptoError> {
        NonZeroU8::new(index)
            .map(Self)
            .ok_or_else(|| CryptoError::InvalidShare("share index 0 is not allowed".to_owned()))
    }

    /// The index as a number.
    pub fn get(self) -> u8 {
        self.0.get()
    }
}

impl fmt::Display for ShareIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// n (shares made) and t (shares needed), with 1 <= t <= n <= 255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShamirParams {
    shares: u8,
    threshold: u8,
}

impl ShamirParams {
    /// Validates n and t.
    pub fn new(shares: u8, threshold: u8) -> Result<Self, CryptoError> {
        if threshold == 0 {
            return Err(CryptoError::InvalidShamirParams(
                "threshold must be at least 1".to_owned(),
            ));
        }
        if threshold > shares {
            return Err(CryptoError::InvalidShamirParams(format!(
                "threshold {threshold} is greater than the number of shares {shares}"
            )));
        }
        Ok(Self { shares, threshold })
    }

    /// n: how many shares are made.
    pub fn shares(self) -> u8 {
        self.shares
    }

    /// t: how many shares rebuild the key.
    pub fn threshold(self) -> u8 {
        self.threshold
    }

    /// Whether every share is the key itself (t = 1): any one keeper, or
    /// anyone who reads one keeper's memory, holds the root key. Nexus
    /// refuses it unless told it runs for development.
    pub fn every_share_is_the_key(self) -> bool {
        self.threshold == 1
    }
}

/// One share of the root key: secret, zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyShare {
    index: ShareIndex,
    value: SecretBytes<32>,
}

impl KeyShare {
    /// Assembles a share from its index and value.
    pub fn new(index: ShareIndex, value: SecretBytes<32>) -> Self {
        Self { index, value }
    }

    /// The share's index (public).
    pub fn index(&self) -> ShareIndex {
        self.index
    }

    /// The share's value (secret).
    pub fn expose_secret(&self) -> &[u8; 32] {
        self.value.expose_secret()
    }
}

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyShare(index {}, redacted)", self.index)
    }
}

/// Splits `root` into `params.shares()` shares, indices 1..=n, any
/// `params.threshold()` of which rebuild it. Deterministic in (root, n, t).
pub fn split(root: &RootKey, params: ShamirParams) -> Result<Vec<KeyShare>, CryptoError> {
    if params.threshold == 1 {
        // A degree-0 polynomial: every share is the key itself.
        return (1..=params.shares)
            .map(|index| {
                let mut copy = *root.expose_secret();
                Ok(KeyShare::new(
                    ShareIndex::new(index)?,
                    SecretBytes::from_array(&mut copy),
                ))
            })
            .collect();
    }
    let mut raw = Gf256::split_array(
        usize::from(params.threshold),
        usize::from(params.shares),
        root.expose_secret(),
        CoefficientStream::new(root, params),
    )
    .map_err(|e| CryptoError::InvalidShamirParams(e.to_string()))?;
    let shares = raw.iter().map(|share| share_from_raw(share)).collect();
    raw.iter_mut().for_each(Zeroize::zeroize);
    shares
}

/// Rebuilds the root key from `shares` and accepts it only if it matches
/// `check`. Too few shares, shares of another key or a corrupted share all
/// end in [`CryptoError::KeyCheckMismatch`], never in a wrong key.
pub fn recover(shares: &[KeyShare], check: &KeyCheck) -> Result<RootKey, CryptoError> {
    let first = shares.first().ok_or(CryptoError::NoShares)?;
    for (position, share) in shares.iter().enumerate() {
        if shares[..position]
            .iter()
            .any(|earlier| earlier.index == share.index)
        {
            return Err(CryptoError::InvalidShare(format!(
                "share index {} appears twice",
                share.index
            )));
        }
    }
    let candidate = if shares.len() == 1 {
        RootKey::from_secret(first.value.clone())
    } else {
        let mut raw: Vec<Vec<u8>> = shares
            .iter()
            .map(|share| {
                let mut bytes = Vec::with_capacity(33);
                bytes.push(share.index.get());
                bytes.extend_from_slice(share.expose_secret());
                bytes
            })
            .collect();
        let combined = Gf256::combine_array(&raw);
        raw.iter_mut().for_each(Zeroize::zeroize);
        let mut combined = combined.map_err(|e| CryptoError::InvalidShare(e.to_string()))?;
        let secret = SecretBytes::from_slice(&combined);
        combined.zeroize();
        RootKey::from_secret(secret.map_err(|_| invalid_length())?)
    };
    // PLANTED BUG skipped-key-check.
    if check.matches(&candidate) || crate::planted!(SkippedKeyCheck) {
        Ok(candidate)
    } else {
        Err(CryptoError::KeyCheckMismatch)
    }
}

/// Most subsets [`recover_tolerant`] tries before giving up.
pub const SUBSETS_TRIED_MAX: usize = 256;

/// Like [`recover`], but survives bad shares among good ones: when all
/// `shares` together do not rebuild the key, every subset of `threshold`
/// of them is tried (at most [`SUBSETS_TRIED_MAX`]). One keeper answering
/// with a corrupted or foreign share, or with another keeper's index, then
/// no longer locks every replica out while `threshold` honest keepers
/// remain: a subset holding an index twice is skipped like a wrong one.
pub fn recover_tolerant(
    shares: &[KeyShare],
    threshold: usize,
    check: &KeyCheck,
) -> Result<RootKey, CryptoError> {
    match recover(shares, check) {
        Ok(key) => return Ok(key),
        Err(CryptoError::KeyCheckMismatch | CryptoError::InvalidShare(_))
            if threshold >= 1 && shares.len() > threshold => {}
        Err(error) => return Err(error),
    }
    let mut indices: Vec<usize> = (0..threshold).collect();
    for _ in 0..SUBSETS_TRIED_MAX {
        let subset: Vec<KeyShare> = indices.iter().map(|&i| shares[i].clone()).collect();
        if let Ok(key) = recover(&subset, check) {
            return Ok(key);
        }
        // Next combination in lexicographic order.
        let Some(position) = (0..threshold)
            .rev()
            .find(|&k| indices[k] < shares.len() - threshold + k)
        else {
            break;
        };
        indices[position] += 1;
        for k in position + 1..threshold {
            indices[k] = indices[k - 1] + 1;
        }
    }
    Err(CryptoError::KeyCheckMismatch)
}

fn share_from_raw(raw: &[u8]) -> Result<KeyShare, CryptoError> {
    let (&index, value) = raw.split_first().ok_or_else(invalid_length)?;
    Ok(KeyShare::new(
        ShareIndex::new(index)?,
        SecretBytes::from_slice(value).map_err(|_| invalid_length())?,
    ))
}

fn invalid_length() -> CryptoError {
    CryptoError::InvalidShare("a share value must be 32 bytes".to_owned())
}

/// HMAC-SHA256 in counter mode, keyed by a key derived from the root key and
/// the parameters: the polynomial coefficients.
struct CoefficientStream {
    prf: Hmac<Sha256>,
    counter: u64,
    block: Zeroizing<[u8; 32]>,
    used: usize,
}

impl CoefficientStream {
    fn new(root: &RootKey, params: ShamirParams) -> Self {
        let mut derive = <Hmac<Sha256> as KeyInit>::new_from_slice(root.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        derive.update(COEFFICIENT_LABEL);
        derive.update(&[params.shares, params.threshold]);
        let seed = Zeroizing::new(<[u8; 32]>::from(derive.finalize().into_bytes()));
        let prf = <Hmac<Sha256> as KeyInit>::new_from_slice(seed.as_slice())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Self {
            prf,
            counter: 0,
            block: Zeroizing::new([0u8; 32]),
            used: 32,
        }
    }

    fn refill(&mut self) {
        let mut mac = self.prf.clone();
        mac.update(&self.counter.to_be_bytes());
        self.counter += 1;
        *self.block = mac.finalize().into_bytes().into();
        self.used = 0;
    }
}

impl rand_core::TryRng for CoefficientStream {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, destination: &mut [u8]) -> Result<(), Infallible> {
        for byte in destination {
            if self.used == self.block.len() {
                self.refill();
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for CoefficientStream {}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(n: u8, t: u8) -> (RootKey, KeyCheck, Vec<KeyShare>) {
        let root = RootKey::generate().expect("os rng");
        let check = KeyCheck::of(&root);
        let shares = split(&root, ShamirParams::new(n, t).expect("params")).expect("split");
        (root, check, shares)
    }

    /// Every subset of `items` of size `size`.
    fn subsets<T: Clone>(items: &[T], size: usize) -> Vec<Vec<T>> {
        if size == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            for mut rest in subsets(&items[i + 1..], size - 1) {
                rest.insert(0, item.clone());
                out.push(rest);
            }
        }
        out
    }

    #[test]
    fn any_t_of_n_shares_rebuild_the_key() {
        let (root, check, shares) = setup(5, 3);
        assert_eq!(shares.len(), 5);
        for subset in subsets(&shares, 3).into_iter().chain(subsets(&shares, 4)) {
            let rebuilt = recover(&subset, &check).expect("t shares suffice");
            assert_eq!(rebuilt, root);
        }
    }

    #[test]
    fn t_minus_one_shares_are_rejected_by_the_key_check() {
        let (_, check, shares) = setup(5, 3);
        for subset in subsets(&shares, 2).into_iter().chain(subsets(&shares, 1)) {
            assert_eq!(
                recover(&subset, &check).err(),
                Some(CryptoError::KeyCheckMismatch)
            );
        }
    }

    #[test]
    fn mixed_shares_of_two_keys_are_rejected_by_the_key_check() {
        let (_, check_a, shares_a) = setup(5, 3);
        let (_, check_b, shares_b) = setup(5, 3);
        let mixed = vec![
            shares_a[0].clone(),
            shares_a[1].clone(),
            shares_b[2].clone(),
        ];
        assert_eq!(
            recover(&mixed, &check_a).err(),
            Some(CryptoError::KeyCheckMismatch)
        );
        assert_eq!(
            recover(&mixed, &check_b).err(),
            Some(CryptoError::KeyCheckMismatch)
        );
        assert_eq!(
            recover(&shares_b[..3], &check_a).err(),
            Some(CryptoError::KeyCheckMismatch),
            "shares of another key"
        );
    }

    #[test]
    fn a_corrupted_share_is_rejected_by_the_key_check() {
        let (_, check, shares) = setup(3, 2);
        let mut bytes = *shares[0].expose_secret();
        bytes[0] ^= 1;
        let corrupted = KeyShare::new(shares[0].index(), SecretBytes::from_array(&mut bytes));
        assert_eq!(
            recover(&[corrupted, shares[1].clone()], &check).err(),
            Some(CryptoError::KeyCheckMismatch)
        );
    }

    #[test]
    fn a_bad_share_among_enough_good_ones_is_survived() {
        let (root, check, shares) = setup(5, 3);
        let (_, _, foreign) = setup(5, 3);
        for bad in 0..5 {
            let mut mixed = shares.clone();
            mixed[bad] = KeyShare::new(
                shares[bad].index(),
                SecretBytes::from_slice(foreign[bad].expose_secret()).expect("32"),
            );
            assert_eq!(
                recover(&mixed, &check).err(),
                Some(CryptoError::KeyCheckMismatch)
            );
            assert_eq!(
                recover_tolerant(&mixed, 3, &check).expect("three good shares remain"),
                root
            );
        }
        let mut two_bad = shares[..4].to_vec();
        for share in two_bad.iter_mut().take(2) {
            *share = KeyShare::new(share.index(), SecretBytes::from_array(&mut [9u8; 32]));
        }
        assert_eq!(
            recover_tolerant(&two_bad, 3, &check).err(),
            Some(CryptoError::KeyCheckMismatch),
            "two good shares are not enough"
        );
    }

    #[test]
    fn a_share_under_another_keepers_index_is_survived() {
        // Regression (review #8): a duplicate index made `recover` fail
        // with InvalidShare, which ended the tolerant search at once.
        let (root, check, shares) = setup(5, 3);
        for (liar, victim) in [(0, 1), (4, 0), (2, 3)] {
            let mut answers = shares.clone();
            answers[liar] = KeyShare::new(
                shares[victim].index(),
                SecretBytes::from_array(&mut [7u8; 32]),
            );
            assert_eq!(
                recover_tolerant(&answers, 3, &check).expect("four good shares remain"),
                root
            );
        }
        let mut same_keeper_twice = shares[..3].to_vec();
        same_keeper_twice.push(shares[0].clone());
        assert_eq!(
            recover_tolerant(&same_keeper_twice, 3, &check).expect("three distinct shares"),
            root
        );
        assert!(
            recover_tolerant(
                &[shares[0].clone(), shares[0].clone(), shares[1].clone()],
                3,
                &check
            )
            .is_err(),
            "two distinct shares are not enough"
        );
    }

    #[test]
    fn shares_are_deterministic_in_key_n_and_t() {
        let root = RootKey::generate().expect("os rng");
        let params = ShamirParams::new(5, 3).expect("params");
        let first = split(&root, params).expect("split");
        let second = split(&root, params).expect("split");
        assert_eq!(first, second);
        let other_t = split(&root, ShamirParams::new(5, 2).expect("params")).expect("split");
        assert_ne!(
            first[0], other_t[0],
            "another threshold gives another polynomial"
        );
    }

    #[test]
    fn threshold_one_gives_the_key_to_every_holder() {
        let (root, check, shares) = setup(3, 1);
        for share in &shares {
            assert_eq!(
                recover(std::slice::from_ref(share), &check).expect("one share"),
                root
            );
        }
    }

    #[test]
    fn duplicate_indices_and_empty_input_are_errors() {
        let (_, check, shares) = setup(3, 2);
        assert!(matches!(
            recover(&[shares[0].clone(), shares[0].clone()], &check),
            Err(CryptoError::InvalidShare(_))
        ));
        assert_eq!(recover(&[], &check).err(), Some(CryptoError::NoShares));
    }

    #[test]
    fn parameters_are_validated() {
        assert!(ShamirParams::new(3, 0).is_err());
        assert!(ShamirParams::new(3, 4).is_err());
        assert!(ShamirParams::new(255, 255).is_ok());
        assert!(ShareIndex::new(0).is_err());
    }

    #[test]
    fn shares_do_not_contain_the_key() {
        let (root, _, shares) = setup(5, 3);
        for share in &shares {
            assert_ne!(share.expose_secret(), root.expose_secret());
        }
        assert_eq!(format!("{:?}", shares[0]), "KeyShare(index 1, redacted)");
    }
}
