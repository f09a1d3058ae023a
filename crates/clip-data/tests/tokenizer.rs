//! Token ids against the Hugging Face `tokenizers` reference (fixtures/make_fixtures.py).

use clip_data::CaptionTokenizer;

#[derive(serde::Deserialize)]
struct Case {
    caption: String,
    max_length: usize,
    ids: Vec<u32>,
}

#[test]
fn ids_match_hugging_face_bert_base_uncased() {
    let cases: Vec<Case> = serde_json::from_str(include_str!("fixtures/tokens.json")).unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let tok = CaptionTokenizer::bert_base_uncased(case.max_length).unwrap();
        assert_eq!(
            tok.encode(&case.caption).unwrap(),
            case.ids,
            "{:?} (max {})",
            case.caption,
            case.max_length
        );
    }
}

#[test]
fn known_caption_has_known_ids() {
    // [CLS] a dog runs across the grass . [SEP] in bert-base-uncased.
    let tok = CaptionTokenizer::bert_base_uncased(200).unwrap();
    assert_eq!(
        tok.encode("A dog runs across the grass .").unwrap(),
        vec![101, 1037, 3899, 3216, 2408, 1996, 5568, 1012, 102]
    );
    // Accents are stripped and case folded: "Café" tokenizes like "cafe".
    assert_eq!(tok.encode("Café").unwrap(), tok.encode("cafe").unwrap());
}

#[test]
fn truncation_keeps_cls_and_sep() {
    let tok = CaptionTokenizer::bert_base_uncased(5).unwrap();
    let ids = tok.encode("one two three four five six seven").unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!((ids[0], ids[4]), (101, 102));
}

#[test]
fn vocab_file_and_tokenizer_json_specs() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = dir.path().join("vocab.txt");
    std::fs::write(&vocab, clip_data::tokenizer::BERT_BASE_UNCASED_VOCAB).unwrap();
    let from_file = CaptionTokenizer::from_spec(vocab.to_str().unwrap(), 32).unwrap();
    let embedded = CaptionTokenizer::bert_base_uncased(32).unwrap();
    assert_eq!(from_file.encode("a red circle").unwrap(), embedded.encode("a red circle").unwrap());

    let missing = CaptionTokenizer::from_spec(dir.path().join("nope.json").to_str().unwrap(), 32)
        .unwrap_err();
    assert!(missing.to_string().contains("nope.json"), "{missing}");
}
