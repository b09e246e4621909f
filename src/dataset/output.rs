//! Writes one frozen set: the JSON file plus, for image sets, a `<stem>_images/` folder beside it.
//!
//! Nothing half-written is ever left in place: images go to a hidden staging folder first, and
//! only when every sample succeeded is the folder moved into place and the JSON written
//! atomically. Dropping a [`SetWriter`] without [`SetWriter::finish`] (an error, Ctrl-C) removes
//! the staging folder.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::ImageFormat;

use super::DatasetFile;
use crate::fsutil::{parent_dir, sanitize_file_stem, write_atomic};

/// Format and size of an encoded image, read from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl ImageInfo {
    /// File extension for the format (`jpg`, `png`...).
    pub fn extension(&self) -> &'static str {
        match self.format {
            ImageFormat::Jpeg => "jpg",
            ImageFormat::Png => "png",
            ImageFormat::Gif => "gif",
            ImageFormat::WebP => "webp",
            ImageFormat::Bmp => "bmp",
            other => other.extensions_str().first().copied().unwrap_or("img"),
        }
    }
}

/// Identifies an encoded image by its magic bytes and reads its dimensions from the header
/// (cheap: pixels are not decoded). The error says what is wrong, for the caller to place.
pub fn probe_image(bytes: &[u8]) -> std::result::Result<ImageInfo, String> {
    let format = image::guess_format(bytes)
        .map_err(|_| "not a recognised image (expected JPEG, PNG, GIF, WebP or BMP)".to_string())?;
    let reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| format!("undecodable {format:?} image: {e}"))?;
    if width == 0 || height == 0 {
        return Err(format!("{format:?} image has zero size ({width}x{height})"));
    }
    Ok(ImageInfo {
        format,
        width,
        height,
    })
}

/// Builds one set on disk. See the module docs for the guarantees.
pub struct SetWriter {
    json_path: PathBuf,
    images_dir_name: String,
    staging: PathBuf,
    staged_any: bool,
    finished: bool,
}

impl SetWriter {
    pub fn new(json_path: &Path) -> Result<Self> {
        let stem = json_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .with_context(|| format!("output path {} has no file name", json_path.display()))?;
        let dir = parent_dir(json_path);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        let images_dir_name = format!("{stem}_images");
        let staging = dir.join(format!(".{images_dir_name}.tmp-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).ok();
        }
        Ok(Self {
            json_path: json_path.to_path_buf(),
            images_dir_name,
            staging,
            staged_any: false,
            finished: false,
        })
    }

    /// Where the JSON will be written.
    pub fn json_path(&self) -> &Path {
        &self.json_path
    }

    /// Stores an encoded image under a name derived from `id` (sanitised) and returns its path
    /// relative to the JSON file. `bytes` are written unchanged.
    pub fn write_image(&mut self, id: &str, bytes: &[u8], info: &ImageInfo) -> Result<String> {
        let file_name = format!("{}.{}", sanitize_file_stem(id), info.extension());
        let dest = self.stage_path(&file_name)?;
        std::fs::write(&dest, bytes)
            .with_context(|| format!("cannot write image {}", dest.display()))?;
        Ok(format!("{}/{}", self.images_dir_name, file_name))
    }

    /// Copies (or hard-links, when possible) an existing image file into the set under the name
    /// `file_name` (sanitised) and returns its relative path.
    pub fn copy_image(&mut self, file_name: &str, src: &Path) -> Result<String> {
        let file_name = sanitize_file_stem(file_name);
        let dest = self.stage_path(&file_name)?;
        if std::fs::hard_link(src, &dest).is_err() {
            std::fs::copy(src, &dest).with_context(|| {
                format!("cannot copy image {} to {}", src.display(), dest.display())
            })?;
        }
        Ok(format!("{}/{}", self.images_dir_name, file_name))
    }

    /// Removes an image written earlier in this set (given by its relative path).
    pub fn remove_image(&mut self, rel: &str) -> Result<()> {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let path = self.staging.join(name);
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove unused image {}", path.display()))
    }

    fn stage_path(&mut self, file_name: &str) -> Result<PathBuf> {
        if !self.staged_any {
            std::fs::create_dir_all(&self.staging).with_context(|| {
                format!("cannot create staging folder {}", self.staging.display())
            })?;
            self.staged_any = true;
        }
        let dest = self.staging.join(file_name);
        if dest.exists() {
            bail!(
                "two samples map to the same image file name {file_name:?}; their ids differ only in characters that are not safe in file names"
            );
        }
        Ok(dest)
    }

    /// Moves the images into place and writes the JSON atomically.
    pub fn finish(mut self, file: &DatasetFile) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(file).context("cannot serialise the data set")?;
        json.push(b'\n');
        let final_images = parent_dir(&self.json_path).join(&self.images_dir_name);
        if final_images.exists() {
            std::fs::remove_dir_all(&final_images).with_context(|| {
                format!("cannot replace old image folder {}", final_images.display())
            })?;
        }
        if self.staged_any {
            std::fs::rename(&self.staging, &final_images)
                .with_context(|| format!("cannot move images into {}", final_images.display()))?;
        }
        write_atomic(&self.json_path, &json)?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for SetWriter {
    fn drop(&mut self) {
        if !self.finished && self.staged_any {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}
