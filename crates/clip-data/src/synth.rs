//! A synthetic image–caption dataset in the Flickr30k layout whose captions really describe
//! their images: coloured shapes of several kinds, positions and sizes, each image with five
//! differently worded captions. A model trained on it can learn, and tests can check it did.
//!
//! Everything is a pure function of (seed, image index): the same seed gives the same files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::augment::item_rng;
use crate::error::{DataError, Result};
use crate::fs::write_atomic;

/// Shape kinds, with the words captions use for them.
pub const SHAPES: [(&str, &[&str]); 5] = [
    ("circle", &["circle", "round disc", "dot"]),
    ("square", &["square", "box", "block"]),
    ("triangle", &["triangle", "three-sided shape", "wedge"]),
    ("diamond", &["diamond", "rhombus", "tilted square"]),
    ("cross", &["cross", "plus sign", "plus shape"]),
];

/// Colour names and their RGB values.
pub const COLORS: [(&str, [u8; 3]); 8] = [
    ("red", [220, 30, 30]),
    ("green", [30, 170, 50]),
    ("blue", [30, 60, 220]),
    ("yellow", [240, 220, 30]),
    ("purple", [140, 40, 180]),
    ("orange", [250, 140, 20]),
    ("cyan", [30, 210, 220]),
    ("pink", [250, 130, 190]),
];

/// The 3×3 grid of positions: (name, column, row, phrases).
pub const POSITIONS: [(&str, u32, u32, &[&str]); 9] = [
    ("top left", 0, 0, &["in the top left corner", "at the upper left", "top left"]),
    ("top", 1, 0, &["at the top", "near the top edge", "top center"]),
    ("top right", 2, 0, &["in the top right corner", "at the upper right", "top right"]),
    ("left", 0, 1, &["on the left", "at the left side", "middle left"]),
    ("center", 1, 1, &["in the center", "in the middle", "center"]),
    ("right", 2, 1, &["on the right", "at the right side", "middle right"]),
    ("bottom left", 0, 2, &["in the bottom left corner", "at the lower left", "bottom left"]),
    ("bottom", 1, 2, &["at the bottom", "near the bottom edge", "bottom center"]),
    ("bottom right", 2, 2, &["in the bottom right corner", "at the lower right", "bottom right"]),
];

/// Size names.
pub const SIZES: [&str; 2] = ["small", "large"];

/// Backgrounds: (name, base RGB).
pub const BACKGROUNDS: [(&str, [u8; 3]); 3] =
    [("white", [235, 235, 235]), ("gray", [128, 128, 128]), ("black", [25, 25, 25])];

/// How much synthetic data to make (`[data.synthetic]` in a config: generate when missing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    pub images: usize,
    pub image_size: u32,
    pub seed: u64,
    /// Fraction of images holding two shapes instead of one.
    pub two_shape_fraction: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self { images: 1500, image_size: 64, seed: 0, two_shape_fraction: 0.25 }
    }
}

/// One drawn shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShapeSpec {
    pub shape: usize,
    pub color: usize,
    pub position: usize,
    pub size: usize,
}

/// Everything about one synthetic image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scene {
    pub background: usize,
    pub shapes: Vec<ShapeSpec>,
    pub captions: [String; 5],
}

/// Draws scene `index` of a synthetic dataset (pure: depends only on the config and index).
pub fn scene(config: &SynthConfig, index: usize) -> Scene {
    let mut rng = item_rng(config.seed, u64::MAX, index as u64);
    let background = rng.random_range(0..BACKGROUNDS.len());
    let n = if rng.random_bool(config.two_shape_fraction.clamp(0.0, 1.0)) { 2 } else { 1 };
    let mut shapes: Vec<ShapeSpec> = Vec::new();
    while shapes.len() < n {
        let s = ShapeSpec {
            shape: rng.random_range(0..SHAPES.len()),
            color: rng.random_range(0..COLORS.len()),
            position: rng.random_range(0..POSITIONS.len()),
            size: rng.random_range(0..SIZES.len()),
        };
        let clashes = shapes.iter().any(|o| o.position == s.position || o.color == s.color);
        if !clashes && contrast(COLORS[s.color].1, BACKGROUNDS[background].1) > 120 {
            shapes.push(s);
        }
    }
    let captions = captions(&mut rng, background, &shapes);
    Scene { background, shapes, captions }
}

fn contrast(a: [u8; 3], b: [u8; 3]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (*x as i32 - y as i32).unsigned_abs()).sum()
}

fn captions(rng: &mut impl Rng, background: usize, shapes: &[ShapeSpec]) -> [String; 5] {
    let bg = BACKGROUNDS[background].0;
    let pick = |rng: &mut dyn rand::RngCore, words: &[&'static str]| {
        words[rng.random_range(0..words.len())]
    };
    let one = |rng: &mut dyn rand::RngCore, s: &ShapeSpec, style: usize| -> String {
        let (shape, syn) = SHAPES[s.shape];
        let color = COLORS[s.color].0;
        let size = SIZES[s.size];
        let (pos_name, _, _, phrases) = POSITIONS[s.position];
        match style {
            0 => format!("a {size} {color} {shape} {}", phrases[0]),
            1 => format!("{size} {color} {} {}", pick(rng, syn), pick(rng, phrases)),
            2 => format!("a {color} {} that is {size}, {}", pick(rng, syn), phrases[1]),
            3 => format!("one {size} {} coloured {color} placed {}", pick(rng, syn), phrases[0]),
            _ => format!("{pos_name}: a {color} {size} {}", pick(rng, syn)),
        }
    };
    std::array::from_fn(|style| {
        let parts: Vec<String> = shapes.iter().map(|s| one(rng, s, style)).collect();
        let body = parts.join(" and ");
        match style {
            0 => format!("{body} on a {bg} background ."),
            1 => format!("There is a {body} ."),
            2 => format!("A picture of {body} ."),
            3 => format!("{} ; the background is {bg} .", capitalize(&body)),
            _ => format!("{} .", capitalize(&body)),
        }
    })
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// Renders a scene (4× supersampled edges, lightly noisy background).
pub fn render(config: &SynthConfig, index: usize, scene: &Scene) -> RgbImage {
    let size = config.image_size;
    let mut rng = item_rng(config.seed ^ 0xa5a5, u64::MAX, index as u64);
    let base = BACKGROUNDS[scene.background].1;
    let w = size as f32;
    // Centre and radius per shape, with a little jitter inside its grid cell.
    let placed: Vec<(f32, f32, f32, usize, [u8; 3])> = scene
        .shapes
        .iter()
        .map(|s| {
            let (_, col, row, _) = POSITIONS[s.position];
            let r = w * if s.size == 0 { 0.085 } else { 0.15 };
            let slack = (w / 6.0 - r).max(0.0) * 0.8;
            let cx = (col as f32 * 2.0 + 1.0) * w / 6.0 + rng.random_range(-slack..=slack);
            let cy = (row as f32 * 2.0 + 1.0) * w / 6.0 + rng.random_range(-slack..=slack);
            (cx, cy, r, s.shape, COLORS[s.color].1)
        })
        .collect();
    let mut img = RgbImage::new(size, size);
    for y in 0..size {
        for x in 0..size {
            let noise: i32 = rng.random_range(-8..=8);
            let mut px = base.map(|c| (c as i32 + noise).clamp(0, 255) as f32);
            for &(cx, cy, r, shape, color) in &placed {
                let mut covered = 0;
                for sy in 0..4 {
                    for sx in 0..4 {
                        let dx = (x as f32 + (sx as f32 + 0.5) / 4.0 - cx) / r;
                        let dy = (y as f32 + (sy as f32 + 0.5) / 4.0 - cy) / r;
                        covered += inside(shape, dx, dy) as u32;
                    }
                }
                let a = covered as f32 / 16.0;
                for c in 0..3 {
                    px[c] = px[c] * (1.0 - a) + color[c] as f32 * a;
                }
            }
            img.put_pixel(x, y, Rgb(px.map(|v| v.round() as u8)));
        }
    }
    img
}

/// Whether a point (in units of the shape's radius, relative to its centre) is inside the shape.
fn inside(shape: usize, dx: f32, dy: f32) -> bool {
    match SHAPES[shape].0 {
        "circle" => dx * dx + dy * dy <= 1.0,
        "square" => dx.abs() <= 0.82 && dy.abs() <= 0.82,
        "triangle" => (-1.0..=0.8).contains(&dy) && dx.abs() <= (dy + 1.0) * 0.55,
        "diamond" => dx.abs() + dy.abs() <= 1.0,
        _ => (dx.abs() <= 0.3 && dy.abs() <= 1.0) || (dy.abs() <= 0.3 && dx.abs() <= 1.0),
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct SynthSummary {
    pub dir: PathBuf,
    pub images: usize,
    pub captions: usize,
}

impl std::fmt::Display for SynthSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {} images and {} captions to {}",
            self.images,
            self.captions,
            self.dir.display()
        )
    }
}

/// The marker of a folder this generator wrote: the config it was (or is being) generated with.
pub const MARKER: &str = "synth.json";

/// What to do instead when the folder is not the generator's (`clip data synth --out`, xtask).
pub const OUT_HINT: &str = "Choose a missing or empty folder for the synthetic dataset.";

/// The config recorded in `dir`'s marker, when `dir` is a folder this generator wrote (every
/// field present, nothing else: a user's own `synth.json` is not taken for one).
pub fn marker(dir: &Path) -> Option<SynthConfig> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        images: usize,
        image_size: u32,
        seed: u64,
        two_shape_fraction: f64,
    }
    let bytes = std::fs::read(dir.join(MARKER)).ok()?;
    let s: Strict = serde_json::from_slice(&bytes).ok()?;
    Some(SynthConfig {
        images: s.images,
        image_size: s.image_size,
        seed: s.seed,
        two_shape_fraction: s.two_shape_fraction,
    })
}

/// Writes `images/NNNNN.jpg`, `results.csv` (Flickr30k format), `labels.csv` (the attributes of
/// each image, for zero-shot evaluation) and `synth.json` (the config) under `dir`, which must be
/// missing, empty, or a dataset this generator wrote (see [`crate::fs::claim_dir`]); anything else
/// is an error and nothing is written. See [`generate_with`].
pub fn generate(dir: &Path, config: &SynthConfig) -> Result<SynthSummary> {
    generate_with(dir, config, OUT_HINT)
}

/// [`generate`], with `hint` (what to do instead) in the error for a folder that is not ours.
///
/// Order: an earlier `results.csv` is removed first, then the marker `synth.json` is written,
/// then the images, `labels.csv`, and `results.csv` last and atomically: an interrupted
/// generation is still recognised as ours, and only a complete dataset has `results.csv`.
pub fn generate_with(dir: &Path, config: &SynthConfig, hint: &str) -> Result<SynthSummary> {
    let err = |message: String| DataError::Synth { path: dir.into(), message };
    if config.images == 0 || config.image_size < 16 {
        return Err(err(format!(
            "need at least 1 image of at least 16 pixels, got {} of {}",
            config.images, config.image_size
        )));
    }
    crate::fs::claim_dir(dir, "the generated synthetic dataset", |d| marker(d).is_some(), hint)?;
    let results_path = dir.join("results.csv");
    match std::fs::remove_file(&results_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(DataError::io(&results_path, e))
        }
        _ => {}
    }
    let meta = serde_json::to_vec_pretty(config).expect("config serializes");
    write_atomic(&dir.join(MARKER), &meta)?;
    let images_dir = dir.join("images");
    std::fs::create_dir_all(&images_dir).map_err(|e| DataError::io(&images_dir, e))?;
    let mut results = String::from("image_name| comment_number| comment\n");
    let mut labels = String::from("image,shape,color,position,size,background,shapes\n");
    for i in 0..config.images {
        let scene = scene(config, i);
        let name = format!("{i:05}.jpg");
        let path = images_dir.join(&name);
        let img = render(config, i, &scene);
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95)
            .encode_image(&img)
            .map_err(|e| err(format!("cannot encode {name}: {e}")))?;
        std::fs::write(&path, bytes).map_err(|e| DataError::io(&path, e))?;
        for (k, c) in scene.captions.iter().enumerate() {
            let _ = writeln!(results, "{name}| {k}| {c}");
        }
        let first = scene.shapes[0];
        let _ = writeln!(
            labels,
            "{name},{},{},{},{},{},{}",
            SHAPES[first.shape].0,
            COLORS[first.color].0,
            POSITIONS[first.position].0,
            SIZES[first.size],
            BACKGROUNDS[scene.background].0,
            scene.shapes.len()
        );
    }
    write_atomic(&dir.join("labels.csv"), labels.as_bytes())?;
    write_atomic(&results_path, results.as_bytes())?;
    Ok(SynthSummary { dir: dir.into(), images: config.images, captions: config.images * 5 })
}

/// `clip data synth --out OUT --images N --size S --seed K`, the one command that writes the
/// dataset (configs with `[data.synthetic]` call [`ensure`]): [`generate`] with the flags'
/// settings and the default two-shape fraction.
pub fn generate_command(out: &Path, images: usize, size: u32, seed: u64) -> Result<SynthSummary> {
    generate(out, &SynthConfig { images, image_size: size, seed, ..SynthConfig::default() })
}

/// Generates the dataset unless a complete one made with the same config is already there.
/// Returns whether it generated. Like [`generate`], it writes only into a missing or empty
/// folder or one it generated before.
pub fn ensure(dir: &Path, config: &SynthConfig) -> Result<bool> {
    ensure_with(dir, config, OUT_HINT)
}

/// [`ensure`], with `hint` in the error for a folder that is not ours.
pub fn ensure_with(dir: &Path, config: &SynthConfig, hint: &str) -> Result<bool> {
    if marker(dir).is_some_and(|c| &c == config) && dir.join("results.csv").is_file() {
        return Ok(false);
    }
    generate_with(dir, config, hint)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SynthConfig {
        SynthConfig { images: 3, image_size: 16, seed, ..SynthConfig::default() }
    }

    /// Every file under `dir` with its bytes.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn generates_into_missing_empty_or_own_folders_and_regenerates() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("a/b");
        assert!(ensure(&missing, &small(0)).unwrap());
        assert!(!ensure(&missing, &small(0)).unwrap(), "same config: kept");
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(ensure(&empty, &small(0)).unwrap());
        assert_eq!(
            std::fs::read(empty.join("results.csv")).unwrap(),
            std::fs::read(missing.join("results.csv")).unwrap()
        );
        // Another config regenerates the folder it made, files the user added beside it kept.
        std::fs::write(empty.join("notes.txt"), b"mine").unwrap();
        let before = std::fs::read(empty.join("images/00000.jpg")).unwrap();
        assert!(ensure(&empty, &small(1)).unwrap());
        assert_eq!(marker(&empty), Some(small(1)));
        assert_ne!(std::fs::read(empty.join("images/00000.jpg")).unwrap(), before);
        assert_eq!(std::fs::read(empty.join("notes.txt")).unwrap(), b"mine");
        // A marker written by an older version (the bare config) is still ours.
        std::fs::write(
            empty.join(MARKER),
            b"{\"images\": 3, \"image_size\": 16, \"seed\": 0, \"two_shape_fraction\": 0.25}",
        )
        .unwrap();
        assert_eq!(marker(&empty), Some(small(0)));
        assert!(!ensure(&empty, &small(0)).unwrap(), "recognised, complete: kept");
        assert!(ensure(&empty, &small(2)).unwrap(), "recognised: regenerated");
    }

    #[test]
    fn a_users_dataset_folder_is_never_written() {
        let root = tempfile::tempdir().unwrap();
        let user = root.path().join("flickr");
        std::fs::create_dir_all(user.join("images")).unwrap();
        std::fs::write(
            user.join("results.csv"),
            b"image_name| comment_number| comment\nmine.jpg| 0| my dog\n",
        )
        .unwrap();
        std::fs::write(user.join("images/mine.jpg"), b"my photo").unwrap();
        // A synth.json of someone else's (extra keys) is no marker of ours either.
        std::fs::write(user.join(MARKER), b"{\"images\": 3, \"tool\": \"theirs\"}").unwrap();
        let before = snapshot(&user);
        for result in [ensure(&user, &small(0)).map(|_| ()), generate(&user, &small(0)).map(|_| ())]
        {
            let err = result.unwrap_err();
            assert!(matches!(err, DataError::NotOurs { .. }), "{err}");
            let err = err.to_string();
            assert!(
                err.contains(&user.display().to_string())
                    && err.contains("`results.csv`")
                    && err.contains(OUT_HINT),
                "{err}"
            );
        }
        assert_eq!(snapshot(&user), before, "nothing of the user's changed");
        // Only images/ (a folder of photos): refused too.
        let photos = root.path().join("photos");
        std::fs::create_dir_all(photos.join("images")).unwrap();
        std::fs::write(photos.join("images/00000.jpg"), b"my photo").unwrap();
        assert!(ensure(&photos, &small(0)).is_err());
        assert_eq!(std::fs::read(photos.join("images/00000.jpg")).unwrap(), b"my photo");
        assert!(!photos.join(MARKER).exists());
    }

    #[test]
    fn an_interrupted_regeneration_is_ours_and_incomplete() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("shapes");
        generate(&dir, &small(0)).unwrap();
        // Make the regeneration fail at its second image (a folder where the file goes).
        std::fs::remove_file(dir.join("images/00001.jpg")).unwrap();
        std::fs::create_dir(dir.join("images/00001.jpg")).unwrap();
        let err = generate(&dir, &small(1)).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }), "{err}");
        // The marker names the new config, the old results.csv is gone: incomplete, and ours.
        assert_eq!(marker(&dir), Some(small(1)));
        assert!(!dir.join("results.csv").exists());
        std::fs::remove_dir(dir.join("images/00001.jpg")).unwrap();
        assert!(
            ensure(&dir, &small(1)).unwrap(),
            "generated again, not refused nor taken as complete"
        );
        assert!(dir.join("results.csv").is_file());
        // An invalid config fails before anything is touched.
        assert!(generate(&dir, &SynthConfig { images: 0, ..small(2) }).is_err());
        assert_eq!(marker(&dir), Some(small(1)));
        assert!(dir.join("results.csv").is_file());
    }

    #[test]
    fn scenes_are_deterministic_and_varied() {
        let c = SynthConfig::default();
        assert_eq!(scene(&c, 3), scene(&c, 3));
        let scenes: Vec<Scene> = (0..200).map(|i| scene(&c, i)).collect();
        for k in 0..SHAPES.len() {
            assert!(scenes.iter().any(|s| s.shapes[0].shape == k));
        }
        assert!(scenes.iter().any(|s| s.shapes.len() == 2));
        let other = SynthConfig { seed: 1, ..c };
        assert_ne!(scene(&other, 3), scene(&SynthConfig::default(), 3));
    }

    #[test]
    fn captions_name_the_attributes_in_five_wordings() {
        let c = SynthConfig { two_shape_fraction: 0.0, ..SynthConfig::default() };
        for i in 0..50 {
            let s = scene(&c, i);
            let sh = s.shapes[0];
            let distinct: std::collections::HashSet<_> = s.captions.iter().collect();
            assert_eq!(distinct.len(), 5, "{:?}", s.captions);
            for cap in &s.captions {
                assert!(cap.to_lowercase().contains(COLORS[sh.color].0), "{cap}");
                assert!(cap.contains(SIZES[sh.size]), "{cap}");
                assert!(SHAPES[sh.shape].1.iter().any(|w| cap.contains(w)), "{cap}");
            }
        }
    }

    #[test]
    fn render_puts_the_colour_where_the_caption_says() {
        let c = SynthConfig { two_shape_fraction: 0.0, image_size: 48, ..SynthConfig::default() };
        for i in 0..20 {
            let s = scene(&c, i);
            let img = render(&c, i, &s);
            let sh = s.shapes[0];
            let (_, col, row, _) = POSITIONS[sh.position];
            let cell = 48 / 3;
            let want = COLORS[sh.color].1;
            let near = |p: &Rgb<u8>| contrast(p.0, want) < 60;
            let in_cell = (row * cell..(row + 1) * cell)
                .flat_map(|y| (col * cell..(col + 1) * cell).map(move |x| (x, y)))
                .filter(|&(x, y)| near(img.get_pixel(x, y)))
                .count();
            let total = img.pixels().filter(|p| near(p)).count();
            assert!(in_cell > 10 && in_cell * 10 >= total * 7, "scene {i}: {in_cell} of {total}");
        }
    }
}
