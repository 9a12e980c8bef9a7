//! RFC 8032 section 7.1 test vectors on the one-signer path, and the promise that a
//! signature by a full roster is a plain Ed25519 signature under the aggregate key.

use chainiac_cosi::simulation::{self, Behaviour, Config};
use chainiac_cosi::{verify, Member, Roster, SecretKey, Signature};
use ed25519_dalek::{Signature as DalekSignature, VerifyingKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::sync::Arc;

struct Vector {
    seed: &'static str,
    public: &'static str,
    message: &'static str,
    signature: &'static str,
}

/// RFC 8032, 7.1: TEST 1, TEST 2, TEST 3 and TEST SHA(abc).
const VECTORS: &[Vector] = &[
    Vector {
        seed: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        public: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        message: "",
        signature: "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    },
    Vector {
        seed: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        public: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        message: "72",
        signature: "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    },
    Vector {
        seed: "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        public: "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        message: "af82",
        signature: "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    },
    Vector {
        seed: "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        public: "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        message: "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        signature: "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b58909351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    },
];

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn keys_and_single_signatures_match_rfc8032() {
    for v in VECTORS {
        let key = SecretKey::from_seed(&unhex(v.seed));
        assert_eq!(key.public_key().to_bytes(), unhex::<32>(v.public), "public key of {}", v.seed);
        let message = hex::decode(v.message).unwrap();
        assert_eq!(key.sign_ed25519(&message), unhex::<64>(v.signature), "signature for {}", v.seed);
    }
}

#[test]
fn rfc8032_signatures_verify_as_one_member_collective_signatures() {
    for v in VECTORS {
        let key = SecretKey::from_seed(&unhex(v.seed));
        let roster = Roster::new(vec![Member::new(&key, "")]).unwrap();
        let message = hex::decode(v.message).unwrap();
        let bytes: [u8; 64] = unhex(v.signature);
        let mut encoded = bytes.to_vec();
        encoded.push(0b1);
        let signature = Signature::from_bytes(&encoded, 1).unwrap();
        verify(&roster, 1, &message, &signature).unwrap();
        // The same bytes with the mask saying nobody signed, or another message, fail.
        let mut nobody = signature.clone();
        nobody.mask = vec![0];
        assert!(verify(&roster, 1, &message, &nobody).is_err());
        assert!(verify(&roster, 1, b"another message", &signature).is_err());
    }
}

#[test]
fn one_signer_protocol_output_is_an_rfc8032_signature() {
    let mut rng = ChaCha20Rng::seed_from_u64(8032);
    for v in VECTORS {
        let key = SecretKey::from_seed(&unhex(v.seed));
        let roster = Arc::new(Roster::new(vec![Member::new(&key, "")]).unwrap());
        let message = hex::decode(v.message).unwrap();
        let config = Config { threshold: 1, branching: 2, leader: 0, max_attempts: 1 };
        let outcome = simulation::run(&roster, &[key], &message, &[Behaviour::Honest], &config, &mut rng).unwrap();
        let dalek_key = VerifyingKey::from_bytes(&unhex(v.public)).unwrap();
        let dalek_signature = DalekSignature::from_bytes(&outcome.signature.to_ed25519_bytes());
        dalek_key.verify_strict(&message, &dalek_signature).unwrap();
    }
}

#[test]
fn full_roster_signature_verifies_with_ed25519_dalek_under_the_aggregate_key() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for (members, branching) in [(2, 1), (7, 2), (33, 3), (100, usize::MAX)] {
        let keys: Vec<SecretKey> = (0..members).map(|_| SecretKey::generate(&mut rng)).collect();
        let roster = Arc::new(Roster::new(keys.iter().map(|k| Member::new(k, "")).collect()).unwrap());
        let config = Config { threshold: members, branching, leader: members / 2, max_attempts: 1 };
        let message = b"block 42 of chain 7";
        let outcome =
            simulation::run(&roster, &keys, message, &vec![Behaviour::Honest; members], &config, &mut rng).unwrap();
        let aggregate = VerifyingKey::from_bytes(&roster.aggregate_key().to_bytes()).unwrap();
        let signature = DalekSignature::from_bytes(&outcome.signature.to_ed25519_bytes());
        aggregate.verify_strict(message, &signature).unwrap();
        assert!(aggregate.verify_strict(b"another message", &signature).is_err());
    }
}
