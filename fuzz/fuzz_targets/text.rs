//! Character corpora and their training streams from arbitrary bytes: the first two bytes
//! choose the number of streams and the chunk length, the next eight a resume position (as a
//! checkpoint would carry it), the rest is the text. Every chunk must be one-hot with labels
//! inside the alphabet, and a refused position must leave the streams where they were.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rnn_core::text::{CharCorpus, CharStreams};

fuzz_target!(|data: &[u8]| {
    let Some((head, text)) = data.split_at_checked(10) else {
        return;
    };
    let (streams, chunk) = (head[0] as usize % 9, head[1] as usize % 65);
    let pos = u64::from_le_bytes(head[2..10].try_into().expect("8 bytes")) as usize;
    let Ok(corpus) = CharCorpus::from_bytes(text) else {
        return;
    };
    let v = corpus.classes();
    assert!((2..=256).contains(&v));
    assert!(corpus.ids().iter().all(|&i| (i as usize) < v));
    let h = corpus.unigram_entropy();
    assert!(h > 0.0 && h <= (v as f64).ln() + 1e-9, "entropy {h} for {v} classes");
    let Ok(mut s) = CharStreams::new(&corpus, streams, chunk) else {
        return;
    };
    let before = s;
    if s.set_position(pos).is_err() {
        assert_eq!(s, before, "a refused position moved the streams");
    }
    let (mut x, mut y) = (vec![0.0f32; chunk * streams * v], vec![0usize; chunk * streams]);
    for _ in 0..3 {
        s.next_chunk(&corpus, &mut x, &mut y).expect("buffers of the right size");
        for (row, &label) in x.chunks(v).zip(&y) {
            assert_eq!(row.iter().filter(|&&e| e == 1.0).count(), 1);
            assert_eq!(row.iter().sum::<f32>(), 1.0);
            assert!(label < v);
        }
        assert!(s.position().is_multiple_of(chunk) && s.position() <= corpus.len() / streams);
    }
});
