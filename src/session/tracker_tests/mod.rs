//! Tracker tests: message sequences by hand, one module per protocol area, then a property
//! test against a reference model (a small simulation of a PostgreSQL backend).

use super::*;

mod copy;
mod errors;
mod extended;
mod model;
mod simple;
mod synthesised;

fn run(t: &mut Tracker, client: &[u8], server: &[(u8, u8)]) {
    for &c in client {
        t.client_msg(c);
    }
    for &(s, b) in server {
        t.server_msg(s, b);
    }
}

// ------------------------------------------------------------------ the property test

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

    #[test]
    fn tracker_matches_a_simulated_backend(
        units in proptest::collection::vec(model::unit(), 0..8),
        effects in proptest::collection::vec(proptest::prelude::any::<bool>(), 1..16),
        choices in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
    ) {
        model::check(&units, &effects, &choices)?;
    }
}
