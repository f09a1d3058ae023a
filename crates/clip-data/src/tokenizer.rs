//! Caption tokenization: BERT-style WordPiece (`[CLS] ... [SEP]`, lowercasing, accent stripping)
//! with truncation, as DistilBERT's and MiniLM's tokenizers do.
//!
//! The bert-base-uncased vocabulary (the same file distilbert-base-uncased uses) is embedded in
//! the crate so that tokenization works offline.

use std::path::Path;

use ahash::AHashMap;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{DataError, Result};

/// The bert-base-uncased WordPiece vocabulary (30,522 tokens; Apache-2.0, see `assets/NOTICE`).
pub const BERT_BASE_UNCASED_VOCAB: &str = include_str!("../assets/bert-base-uncased-vocab.txt");

/// The name that selects the embedded vocabulary in `data.tokenizer`.
pub const BERT_BASE_UNCASED: &str = "bert-base-uncased";

/// Which tokenizer to load and how long captions may be (`DataConfig::tokenizer_config`
/// builds it from `data.tokenizer` and `data.text_max_length`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerConfig {
    /// `bert-base-uncased` (embedded), or a path to a `vocab.txt` or an HF `tokenizer.json`.
    pub spec: String,
    /// Longest caption in tokens, `[CLS]` and `[SEP]` included.
    pub max_length: usize,
}

/// Turns captions into token ids ready for a BERT-family text encoder.
#[derive(Clone)]
pub struct CaptionTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    source: String,
}

impl std::fmt::Debug for CaptionTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptionTokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl CaptionTokenizer {
    /// The embedded bert-base-uncased tokenizer, truncating to `max_length` tokens (specials included).
    pub fn bert_base_uncased(max_length: usize) -> Result<Self> {
        Self::from_vocab_text(BERT_BASE_UNCASED_VOCAB, BERT_BASE_UNCASED, max_length)
    }

    /// The tokenizer a [`TokenizerConfig`] names (see [`Self::from_spec`]).
    pub fn from_config(config: &TokenizerConfig) -> Result<Self> {
        Self::from_spec(&config.spec, config.max_length)
    }

    /// Resolves `data.tokenizer`: `bert-base-uncased`, a `vocab.txt` path, or an HF `tokenizer.json` path.
    pub fn from_spec(spec: &str, max_length: usize) -> Result<Self> {
        if spec == BERT_BASE_UNCASED {
            return Self::bert_base_uncased(max_length);
        }
        let path = Path::new(spec);
        let read_err = |e: std::io::Error| DataError::io(path, e);
        if spec.ends_with(".json") {
            let mut inner =
                Tokenizer::from_file(path).map_err(|source| DataError::TokenizerLibrary {
                    source_name: spec.into(),
                    what: "cannot read the tokenizer file",
                    source,
                })?;
            // HF files carry their own padding/truncation settings: ours win.
            inner.with_padding(None);
            let pad_id = inner.token_to_id("[PAD]").unwrap_or(0);
            let mut tok = Self { inner, pad_id, source: spec.into() };
            tok.set_max_length(max_length)?;
            Ok(tok)
        } else {
            let text = std::fs::read_to_string(path).map_err(read_err)?;
            Self::from_vocab_text(&text, spec, max_length)
        }
    }

    /// Builds the BERT uncased pipeline over a `vocab.txt` (one token per line, id = line index).
    pub fn from_vocab_text(vocab_text: &str, source: &str, max_length: usize) -> Result<Self> {
        let err = |message: String| DataError::Tokenizer { source_name: source.into(), message };
        let vocab: AHashMap<String, u32> = vocab_text
            .lines()
            .enumerate()
            .map(|(i, tok)| (tok.trim_end_matches('\r').to_string(), i as u32))
            .collect();
        let id = |t: &str| {
            vocab.get(t).copied().ok_or_else(|| err(format!("the vocabulary has no {t} token")))
        };
        let (cls, sep, pad) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
        id("[UNK]")?;
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| DataError::TokenizerLibrary {
                source_name: source.into(),
                what: "cannot build WordPiece from the vocabulary",
                source: e,
            })?;
        let mut inner = Tokenizer::new(model);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )));
        let mut tok = Self { inner, pad_id: pad, source: source.into() };
        tok.set_max_length(max_length)?;
        Ok(tok)
    }

    fn set_max_length(&mut self, max_length: usize) -> Result<()> {
        if max_length < 2 {
            return Err(DataError::Tokenizer {
                source_name: self.source.clone(),
                message: format!(
                    "text_max_length must leave room for [CLS] and [SEP], got {max_length}"
                ),
            });
        }
        self.inner
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|source| DataError::TokenizerLibrary {
                source_name: self.source.clone(),
                what: "cannot set the truncation",
                source,
            })?;
        Ok(())
    }

    /// Token ids of one caption: `[CLS] tokens [SEP]`, truncated to the maximum length.
    pub fn encode(&self, caption: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(caption, true).map_err(|e| DataError::Tokenizer {
            source_name: self.source.clone(),
            message: format!("cannot encode {caption:?}: {e}"),
        })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn max_length(&self) -> usize {
        self.inner.get_truncation().map(|t| t.max_length).unwrap_or(usize::MAX)
    }

    /// The tokenizer as a Hugging Face `tokenizer.json` (normalizer, WordPiece vocabulary,
    /// `[CLS]`/`[SEP]`, truncation): what serving an exported model needs, in any language the
    /// `tokenizers` library runs in.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|source| DataError::TokenizerLibrary {
            source_name: self.source.clone(),
            what: "cannot write tokenizer.json",
            source,
        })
    }

    /// Where the vocabulary came from (`bert-base-uncased` or a path).
    pub fn source(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_vocab_is_bert_base_uncased() {
        let tok = CaptionTokenizer::bert_base_uncased(200).unwrap();
        assert_eq!(tok.vocab_size(), 30522);
        assert_eq!(tok.pad_id(), 0);
        assert_eq!(tok.max_length(), 200);
    }

    #[test]
    fn too_short_max_length_is_rejected() {
        assert!(CaptionTokenizer::bert_base_uncased(1).is_err());
    }

    #[test]
    fn vocab_without_specials_is_rejected() {
        let err =
            CaptionTokenizer::from_vocab_text("a\nb\n", "tiny.txt", 16).unwrap_err().to_string();
        assert!(err.contains("tiny.txt") && err.contains("[CLS]"), "{err}");
    }
}
