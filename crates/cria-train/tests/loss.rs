//! Cross-entropy: against PyTorch's CrossEntropyLoss(ignore_index=-100) (fixture from
//! tests/gen_ce_fixture.py, computed in f64: loss within 1e-6 relative, dlogits within 1e-6),
//! against central finite differences (f32 logits, eps 1e-2, tol 2e-3 of the largest gradient),
//! and the same numbers whatever the chunk width.

mod common;

use common::{fd_check, Rng};
use cria_core::npy::read_f32;
use cria_train::loss::{cross_entropy, CrossEntropy, IGNORE};
use std::path::Path;

fn fixture(name: &str) -> Vec<f32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    read_f32(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .1
}

#[test]
fn cross_entropy_is_pytorchs() {
    let logits = fixture("ce_logits.npy");
    let labels: Vec<i32> = fixture("ce_labels.npy").iter().map(|&l| l as i32).collect();
    let (want_loss, want_d) = (fixture("ce_loss.npy")[0], fixture("ce_dlogits.npy"));
    let (t, vocab) = (labels.len(), logits.len() / labels.len());
    assert!(labels.contains(&IGNORE));
    for chunk in [1, 5, 16, 37, 100] {
        let mut state = CrossEntropy::new(t, vocab).unwrap();
        let mut d = vec![f32::NAN; logits.len()];
        let loss = cross_entropy(&mut d, &mut state, &logits, &labels, chunk).unwrap();
        assert!(
            (loss - want_loss).abs() <= 1e-6 * want_loss.abs(),
            "chunk {chunk}: loss {loss} vs {want_loss}"
        );
        for (i, (a, b)) in d.iter().zip(&want_d).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6,
                "chunk {chunk}: dlogits[{i}] {a} vs {b}"
            );
        }
    }
}

/// The chunked interface a trainer uses (each chunk its own (t, w) array, as a head product by
/// column blocks makes them) gives `cross_entropy`'s numbers bit for bit.
#[test]
fn separate_chunks_give_the_same_bits() {
    let mut rng = Rng::new(8);
    let (t, vocab, chunk) = (5, 33, 8);
    let logits = rng.vec(t * vocab, 4.0);
    let labels = [32, IGNORE, 0, 7, 8];
    let mut state = CrossEntropy::new(t, vocab).unwrap();
    let mut want = vec![0f32; logits.len()];
    let loss = cross_entropy(&mut want, &mut state, &logits, &labels, chunk).unwrap();

    let block = |col0: usize, w: usize| -> Vec<f32> {
        (0..t)
            .flat_map(|i| logits[i * vocab + col0..][..w].to_vec())
            .collect()
    };
    let mut streamed = CrossEntropy::new(t, vocab).unwrap();
    for col0 in (0..vocab).step_by(chunk) {
        let w = chunk.min(vocab - col0);
        streamed
            .forward_chunk(&block(col0, w), col0, &labels)
            .unwrap();
    }
    let (total, n) = streamed.loss(&labels).unwrap();
    assert_eq!(n, 4);
    assert_eq!(((total / n as f64) as f32).to_bits(), loss.to_bits());
    for col0 in (0..vocab).step_by(chunk) {
        let w = chunk.min(vocab - col0);
        let mut d = vec![0f32; t * w];
        streamed
            .backward_chunk(&mut d, &block(col0, w), col0, &labels, 1.0 / n as f32)
            .unwrap();
        for i in 0..t {
            assert_eq!(
                &d[i * w..][..w],
                &want[i * vocab + col0..][..w],
                "row {i} at {col0}"
            );
        }
    }
}

#[test]
fn cross_entropy_backward_matches_finite_differences() {
    let mut rng = Rng::new(9);
    for (t, vocab) in [(1, 2), (3, 31), (33, 3), (31, 33)] {
        let logits = rng.vec(t * vocab, 2.0);
        let labels: Vec<i32> = (0..t)
            .map(|i| {
                if i % 3 == 1 {
                    IGNORE
                } else {
                    rng.below(vocab) as i32
                }
            })
            .collect();
        let mut state = CrossEntropy::new(t, vocab).unwrap();
        let mut d = vec![0f32; logits.len()];
        cross_entropy(&mut d, &mut state, &logits, &labels, 7).unwrap();
        let ignored = labels.iter().enumerate().filter(|(_, &l)| l == IGNORE);
        for (i, _) in ignored {
            assert!(d[i * vocab..][..vocab].iter().all(|&g| g == 0.0));
        }
        let mean = |x: &[f32]| {
            let mut s = CrossEntropy::new(t, vocab).unwrap();
            s.forward_chunk(x, 0, &labels).unwrap();
            let (total, n) = s.loss(&labels).unwrap();
            total / n as f64
        };
        fd_check(
            &format!("cross_entropy {t}x{vocab}"),
            &logits,
            &d,
            1e-2,
            2e-3,
            mean,
        );
    }
}

#[test]
fn bad_input_is_an_error() {
    let mut s = CrossEntropy::new(2, 4).unwrap();
    let (logits, mut d) = (vec![0f32; 8], vec![0f32; 8]);
    let msg = |r: Result<f32, cria_train::Error>| r.unwrap_err().0;
    assert!(msg(cross_entropy(&mut d, &mut s, &logits, &[4, 0], 2)).contains("label 4"));
    assert!(msg(cross_entropy(&mut d, &mut s, &logits, &[-1, 0], 2)).contains("label -1"));
    assert!(
        msg(cross_entropy(&mut d, &mut s, &logits, &[IGNORE, IGNORE], 2))
            .contains("nothing to learn")
    );
    assert!(cross_entropy(&mut d, &mut s, &logits, &[0, 0], 0).is_err());
    assert!(cross_entropy(&mut d, &mut s, &logits[..7], &[0, 0], 2).is_err());
    assert!(cross_entropy(&mut d, &mut s, &logits, &[0], 2).is_err());
    let nan = [0.0, f32::NAN, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0];
    assert!(msg(cross_entropy(&mut d, &mut s, &nan, &[0, 1], 3)).contains("not finite"));
    assert!(CrossEntropy::new(2, 0).is_err());
    // A chunk reaching past the vocabulary.
    assert!(s.forward_chunk(&[0.0; 6], 2, &[0, 1]).is_err());
    // The loss before a label's chunk was seen.
    s.reset();
    s.forward_chunk(&[0.0; 4], 0, &[0, 3]).unwrap();
    assert!(s.loss(&[0, 3]).is_err());
}
