//! WebDataset shards as a caption format (`data.format = "webdataset"`): a sample is the members
//! of a tar shard sharing a key (`000123.jpg` with `000123.txt` and/or `000123.json` holding
//! `"caption"`). The tar files themselves are read (and written) by [`crate::shards`].

use std::collections::HashMap;
use std::path::Path;

use crate::captions::{CaptionRecord, ParseReport, ParsedCaptions, RowIssue};
use crate::error::{DataError, Result};
use crate::shards;

/// Image extensions a sample's image member may have.
const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// Reads the samples of every shard `location` names: one record per caption, the image named
/// `<shard file>/<member>` (relative to the shards' directory, which is `data.images`). A
/// record's `line` is its sample's position in its shard (1-based); samples without an image or
/// a caption are reported as skipped.
pub fn read_samples(location: &Path) -> Result<ParsedCaptions> {
    let mut records = Vec::new();
    let mut report = ParseReport::default();
    for shard in shards::list_shards(location)? {
        let index = shards::index_of(&shard).map_err(|e| DataError::io(&shard, e))?;
        let file_name =
            shard.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Members by sample key (the name up to the first dot of its last component).
        let mut samples: HashMap<&str, Vec<&str>> = HashMap::new();
        for name in index.members.keys() {
            let base = name.rsplit('/').next().unwrap_or(name);
            let stem_len = name.len() - base.len() + base.find('.').unwrap_or(base.len());
            samples.entry(&name[..stem_len]).or_default().push(name.as_str());
        }
        // Samples and their members in the order the shard stores them.
        samples.values_mut().for_each(|m| m.sort_by_key(|name| index.members[*name].offset));
        let mut keys: Vec<&str> = samples.keys().copied().collect();
        keys.sort_by_key(|k| index.members[samples[k][0]].offset);
        for (i, key) in keys.iter().enumerate() {
            let line = i + 1;
            let members = &samples[key];
            let ext = |m: &&str| m.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
            let image = members.iter().find(|m| IMAGE_EXTENSIONS.contains(&ext(m).as_str()));
            let mut captions = Vec::new();
            for m in members.iter() {
                let e = ext(m);
                if e != "txt" && e != "json" {
                    continue;
                }
                let bytes = shards::read_at(&shard, index.members[*m])
                    .map_err(|err| DataError::io(&shard, err))?;
                let text = String::from_utf8_lossy(&bytes);
                if e == "txt" {
                    captions.extend(
                        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from),
                    );
                } else if let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) {
                    // img2dataset writes the caption into the json too: use it only without a .txt.
                    if !members.iter().any(|m| ext(m) == "txt") {
                        captions.extend(
                            value
                                .get("caption")
                                .and_then(|c| c.as_str())
                                .map(|c| c.trim().to_string())
                                .filter(|c| !c.is_empty()),
                        );
                    }
                }
            }
            match (image, captions.is_empty()) {
                (Some(image), false) => {
                    let name = format!("{file_name}/{image}");
                    records.extend(captions.into_iter().map(|caption| CaptionRecord {
                        line,
                        image: name.clone(),
                        caption,
                    }));
                }
                (None, _) => report.skipped.push(RowIssue {
                    line,
                    reason: format!("{file_name}: sample {key:?} has no image member"),
                }),
                (Some(_), true) => report.skipped.push(RowIssue {
                    line,
                    reason: format!(
                        "{file_name}: sample {key:?} has no caption (.txt or .json \"caption\")"
                    ),
                }),
            }
        }
    }
    if records.is_empty() {
        return Err(DataError::NoCaptions { path: location.into(), skipped: report.skipped.len() });
    }
    Ok(ParsedCaptions { path: location.into(), records, report, splits: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::captions::ImageCaptions;
    use crate::shards::tests::write_tar;
    use crate::shards::{exists, read_image_bytes, write_shards, ShardSummary};

    #[test]
    fn samples_group_by_key_and_members_read_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let shard = dir.path().join("00000.tar");
        let json = br#"{"caption": "from the json", "url": "x"}"#;
        write_tar(
            &shard,
            &[
                ("000001.jpg", b"image one"),
                ("000001.txt", b"a red circle\n"),
                ("000001.json", json),
                ("sub/000002.png", b"image two"),
                ("sub/000002.json", json),
                ("000003.txt", b"no image"),
                ("000004.jpg", b"no caption"),
            ],
        );
        let parsed = read_samples(dir.path()).unwrap();
        let got: Vec<(&str, &str, usize)> =
            parsed.records.iter().map(|r| (r.image.as_str(), r.caption.as_str(), r.line)).collect();
        assert_eq!(
            got,
            vec![
                ("00000.tar/000001.jpg", "a red circle", 1),
                ("00000.tar/sub/000002.png", "from the json", 2)
            ]
        );
        let skipped: Vec<&str> = parsed.report.skipped.iter().map(|r| r.reason.as_str()).collect();
        assert!(skipped[0].contains("000003") && skipped[0].contains("no image"), "{skipped:?}");
        assert!(skipped[1].contains("000004") && skipped[1].contains("no caption"), "{skipped:?}");

        assert_eq!(
            read_image_bytes(&dir.path().join("00000.tar/sub/000002.png")).unwrap(),
            b"image two"
        );
        assert!(exists(&dir.path().join("00000.tar/000001.jpg")));
        assert!(!exists(&dir.path().join("00000.tar/000009.jpg")));
        let err =
            read_image_bytes(&dir.path().join("00000.tar/000009.jpg")).unwrap_err().to_string();
        assert!(
            err.contains("000009.jpg") && err.contains("no such file or shard member"),
            "{err}"
        );
        // Plain files still read as files.
        std::fs::write(dir.path().join("plain.jpg"), b"plain").unwrap();
        assert_eq!(read_image_bytes(&dir.path().join("plain.jpg")).unwrap(), b"plain");
    }

    #[test]
    fn written_shards_read_back_as_the_same_images_and_captions() {
        let dir = tempfile::tempdir().unwrap();
        let images: Vec<ImageCaptions> = ["a/one.jpg", "two.png", "odd.name.jpg"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let path = dir.path().join("src").join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, format!("pixels {i}")).unwrap();
                ImageCaptions {
                    name: name.to_string(),
                    path,
                    captions: vec![format!("caption {i}"), format!("second\nline {i}")],
                }
            })
            .collect();
        let out = dir.path().join("shards");
        let summary = write_shards(&images, &out, 2).unwrap();
        assert_eq!(summary, ShardSummary { shards: 2, samples: 3, captions: 6 });
        let parsed = read_samples(&out).unwrap();
        let got: Vec<(&str, &str)> =
            parsed.records.iter().map(|r| (r.image.as_str(), r.caption.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("00000.tar/a/one.jpg", "caption 0"),
                ("00000.tar/a/one.jpg", "second line 0"),
                ("00000.tar/two.png", "caption 1"),
                ("00000.tar/two.png", "second line 1"),
                ("00001.tar/000000002.jpg", "caption 2"),
                ("00001.tar/000000002.jpg", "second line 2"),
            ]
        );
        assert_eq!(read_image_bytes(&out.join("00000.tar/two.png")).unwrap(), b"pixels 1");
        // A missing image fails its shard, which is not left half-written.
        let missing = vec![ImageCaptions {
            name: "gone.jpg".into(),
            path: dir.path().join("gone.jpg"),
            captions: vec!["x".into()],
        }];
        let err = write_shards(&missing, &dir.path().join("other"), 2).unwrap_err().to_string();
        assert!(err.contains("gone.jpg"), "{err}");
        assert!(!dir.path().join("other/00000.tar").exists(), "no partial shard is left");
        // A folder that holds anything (earlier shards, the images themselves) is refused.
        for taken in [out.clone(), dir.path().join("src")] {
            let before: Vec<_> =
                std::fs::read_dir(&taken).unwrap().map(|e| e.unwrap().path()).collect();
            let err = write_shards(&images, &taken, 2).unwrap_err().to_string();
            assert!(
                err.contains(&taken.display().to_string()) && err.contains("new or empty --out"),
                "{err}"
            );
            assert_eq!(std::fs::read_dir(&taken).unwrap().count(), before.len());
        }
        assert_eq!(read_image_bytes(&out.join("00000.tar/two.png")).unwrap(), b"pixels 1");
    }

    #[test]
    fn a_folder_without_shards_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_samples(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no `.tar` shards"), "{err}");
    }
}
