//! Random and malformed documents against the control side: it never
//! panics, a refused document changes nothing, an accepted one is in force.

use astara_dp::control::state::Control;
use astara_dp::control::{AstaraConfig, CompileOptions, ports_from_config};
use astara_dp::pktgen::Rng;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::sync::Arc;

mod common;

fn control() -> Arc<Control> {
    let cfg = AstaraConfig::from_json(common::router_json().to_string().as_bytes()).unwrap();
    let c = Control::new(ports_from_config(&cfg), Vec::new(), CompileOptions::default(), None).unwrap();
    c.apply(cfg).unwrap();
    c
}

/// A value of some other shape: what a buggy or hostile client might send.
fn junk(rng: &mut Rng) -> Value {
    match rng.range(0, 11) {
        0 => Value::Null,
        1 => json!(rng.next_u64().is_multiple_of(2)),
        2 => json!(rng.next_u64() as i64),
        3 => json!(-1),
        4 => json!(1e308),
        5 => json!(""),
        6 => json!(format!(
            "{}.{}.{}.{}/{}",
            rng.range(0, 300),
            rng.range(0, 255),
            rng.range(0, 255),
            rng.range(0, 255),
            rng.range(0, 40)
        )),
        7 => json!(format!("fdd6::{:x}/{}", rng.next_u64() as u16, rng.range(0, 140))),
        8 => json!([]),
        9 => json!({}),
        10 => json!(["10.0.0.0/8"]),
        _ => json!("ge1"),
    }
}

/// Replaces (or deletes) one value somewhere in the document.
fn mutate(v: &mut Value, rng: &mut Rng) {
    let descend = rng.range(0, 3) != 0;
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<String> = m.keys().cloned().collect();
            let k = keys[(rng.next_u64() % keys.len() as u64) as usize].clone();
            if descend {
                mutate(m.get_mut(&k).unwrap(), rng);
            } else if rng.range(0, 3) == 0 {
                m.remove(&k);
            } else {
                m.insert(k, junk(rng));
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let i = (rng.next_u64() % a.len() as u64) as usize;
            if descend {
                mutate(&mut a[i], rng);
            } else {
                a[i] = junk(rng);
            }
        }
        other => *other = junk(rng),
    }
}

fn check(c: &Control, body: &[u8]) {
    let before = c.current().unwrap();
    let generation = c.snapshots().load().generation;
    match c.apply_json(body) {
        Ok(applied) => {
            assert_eq!(c.current().unwrap(), applied);
            // Put the original back for the next case.
            c.apply((*before).clone()).unwrap();
        }
        Err(e) => {
            assert!(e.status == 400 || e.status == 422, "{e}");
            assert!(!e.message.is_empty());
            assert_eq!(c.current().unwrap(), before, "a refused document changed the configuration");
            assert_eq!(c.snapshots().load().generation, generation, "a refused document was published");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn mutated_documents(seed in any::<u64>(), edits in 1usize..5) {
        let c = control();
        let mut rng = Rng::new(seed);
        let mut doc = common::router_json();
        for _ in 0..edits {
            mutate(&mut doc, &mut rng);
        }
        check(&c, doc.to_string().as_bytes());
    }

    #[test]
    fn random_bytes(body in prop::collection::vec(any::<u8>(), 0..400)) {
        let c = control();
        check(&c, &body);
    }
}
