//! Owner tokens: what proves, inside the backend, which acquisition holds a key.

/// A fresh 128-bit owner token from the thread-local CSPRNG (ChaCha, seeded
/// from the operating system), as 32 hex digits. Nothing about one token
/// predicts another, so no client can forge a release or an extension.
pub(crate) fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_128_bit_hex_and_unrelated() {
        let tokens: Vec<u128> = (0..2000)
            .map(|_| {
                let token = new_token();
                assert_eq!(token.len(), 32);
                u128::from_str_radix(&token, 16).expect("hex")
            })
            .collect();
        let mut unique = tokens.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), tokens.len(), "tokens repeat");
        // Consecutive tokens differ in about half their bits: neither a
        // counter nor a timestamp, whose neighbours share most bits.
        let differing: u32 = tokens.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
        let mean = f64::from(differing) / (tokens.len() - 1) as f64;
        assert!((60.0..68.0).contains(&mean), "mean differing bits {mean}");
        // Every bit position is set in roughly half the tokens.
        for bit in 0..128 {
            let ones = tokens.iter().filter(|t| (*t >> bit) & 1 == 1).count();
            assert!((800..1200).contains(&ones), "bit {bit} set {ones} times");
        }
    }
}
