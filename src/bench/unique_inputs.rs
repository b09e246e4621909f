//! No request of a served run may be answered from a cache filled by an earlier one. Sweep
//! levels re-send the same set, warm-up requests are measured again, and `--num-prompts` above
//! the set size repeats prompts inside a level; on vLLM or SGLang every repeat would hit the
//! prefix cache (matched from the first token) and the multimodal encoder cache (keyed by the
//! image's content). So, by default, an input that repeats an earlier one is changed just
//! enough to miss both:
//! - a repeated prompt gets a short unique prefix, `[n] `, at its START (a prefix cache then
//!   matches nothing past the chat template's own opening);
//! - a repeated image (the same decoded pixels, whatever the file's format or bytes) gets a few
//!   pixels of its top row set from `n` and is re-encoded in its own format (PNG stays
//!   lossless; a JPEG is re-compressed), so its content hash differs.
//!
//! The first use of every input is sent unchanged. `--repeat-inputs` sends every input exactly
//! as given, to measure what caches buy.
//!
//! The cache workloads measure caches on purpose, so their sharing is kept inside each pass
//! over the set and only broken between passes:
//! - a shared-prefix prompt repeated on a later pass gets the tag of that pass, `[rN] `: every
//!   prompt of one prefix in one pass carries the same tag, so they still share the prefix with
//!   each other but nothing with an earlier pass;
//! - a conversation's first turn is made unique like any prompt; its later turns are sent as
//!   given, since each carries the (now unique) history before it.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Cursor;

use anyhow::{Context, Result};
use tokenizers::Tokenizer;

use crate::dataset::{cache_sets, Sample};
use crate::report::serving::InputPolicy;

/// One request's inputs as they will be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct SentInput {
    pub prompt: String,
    /// Encoded images and their MIME types, in the order they are sent.
    pub images: Vec<(String, Vec<u8>)>,
}

/// Hands out the inputs of every request of a run, in sending order, keeping them unique.
pub struct UniqueInputs<'t> {
    exact: bool,
    tokenizer: Option<&'t Tokenizer>,
    prompts: HashSet<String>,
    images: HashSet<u64>,
    /// Decoded-pixel key of each distinct image file (by its bytes' hash).
    pixel_keys: HashMap<u64, u64>,
    /// Shared-prefix prompts: how often each was handed out (its pass number).
    passes: HashMap<String, u64>,
    next_tag: u64,
    policy: InputPolicy,
}

impl<'t> UniqueInputs<'t> {
    /// `exact`: send repeats unchanged (`--repeat-inputs`). `tokenizer` counts the tokens the
    /// prefixes add.
    pub fn new(exact: bool, tokenizer: Option<&'t Tokenizer>) -> Self {
        Self {
            exact,
            tokenizer,
            prompts: HashSet::new(),
            images: HashSet::new(),
            pixel_keys: HashMap::new(),
            passes: HashMap::new(),
            next_tag: 0,
            policy: InputPolicy {
                repeats: if exact { "exact-repeats" } else { "unique" }.into(),
                prefix_tokens_added: tokenizer.map(|_| 0),
                ..Default::default()
            },
        }
    }

    /// What the run did so far, for the report.
    pub fn policy(&self) -> &InputPolicy {
        &self.policy
    }

    /// The inputs of the next request made from `sample` and its (encoded) `images`, keeping
    /// the sharing a cache workload's set asks for (see the module's notes).
    pub fn next_for(&mut self, sample: &Sample, images: &[(&str, &[u8])]) -> Result<SentInput> {
        if self.exact {
            return self.next(&sample.prompt, images);
        }
        if cache_sets::conversation_turn(sample).is_some_and(|(_, turn)| turn > 0) {
            return Ok(SentInput {
                prompt: sample.prompt.clone(),
                images: owned(images),
            });
        }
        if cache_sets::prefix_group(sample).is_some() && images.is_empty() {
            let pass = self.passes.entry(sample.prompt.clone()).or_insert(0);
            let mut tag = *pass;
            *pass += 1;
            let mut sent = sample.prompt.clone();
            if tag > 0 || !self.prompts.insert(sent.clone()) {
                loop {
                    tag = tag.max(1);
                    sent = format!("[r{tag}] {}", sample.prompt);
                    if self.prompts.insert(sent.clone()) {
                        break;
                    }
                    tag += 1;
                }
                self.count_prefix(&sample.prompt, &sent);
            }
            return Ok(SentInput {
                prompt: sent,
                images: Vec::new(),
            });
        }
        self.next(&sample.prompt, images)
    }

    /// A warm-up request's inputs: as [`Self::next_for`], except that a shared-prefix prompt
    /// gets a warm-up tag, `[w] `, so the warm-up never fills the cache with a prefix that a
    /// measured request will use (the first pass stays cold).
    pub fn next_warm_up(&mut self, sample: &Sample, images: &[(&str, &[u8])]) -> Result<SentInput> {
        if self.exact || cache_sets::prefix_group(sample).is_none() || !images.is_empty() {
            return self.next_for(sample, images);
        }
        let mut n = 0u64;
        loop {
            let sent = match n {
                0 => format!("[w] {}", sample.prompt),
                _ => format!("[w{n}] {}", sample.prompt),
            };
            if self.prompts.insert(sent.clone()) {
                self.count_prefix(&sample.prompt, &sent);
                return Ok(SentInput {
                    prompt: sent,
                    images: Vec::new(),
                });
            }
            n += 1;
        }
    }

    /// Adds what making `prompt` into `sent` cost to the policy's counts.
    fn count_prefix(&mut self, prompt: &str, sent: &str) {
        self.policy.prompts_prefixed += 1;
        self.policy.prefix_chars_added += sent.len() - prompt.len();
        if let (Some(t), Some(total)) = (self.tokenizer, self.policy.prefix_tokens_added.as_mut()) {
            let count = |s: &str| t.encode(s, false).map(|e| e.len() as u64).unwrap_or(0);
            *total += count(sent).saturating_sub(count(prompt));
        }
    }

    /// The inputs of the next request made from `prompt` and (encoded) `images`. Each image is
    /// made unique on its own: one that repeats an earlier image (of this request or an
    /// earlier one) is altered.
    pub fn next(&mut self, prompt: &str, images: &[(&str, &[u8])]) -> Result<SentInput> {
        if self.exact {
            return Ok(SentInput {
                prompt: prompt.to_owned(),
                images: owned(images),
            });
        }
        let mut sent_prompt = prompt.to_owned();
        while !self.prompts.insert(sent_prompt.clone()) {
            self.next_tag += 1;
            sent_prompt = format!("[{}] {prompt}", self.next_tag);
        }
        if sent_prompt.len() != prompt.len() {
            self.count_prefix(prompt, &sent_prompt);
        }
        let mut sent_images = Vec::with_capacity(images.len());
        for &(mime, bytes) in images {
            let mut out = (mime.to_owned(), bytes.to_vec());
            let mut altered = false;
            loop {
                let key = self.pixel_key(&out.1);
                if self.images.insert(key) {
                    break;
                }
                self.next_tag += 1;
                out = alter_pixels(bytes, self.next_tag)?;
                altered = true;
            }
            self.policy.images_altered += altered as usize;
            sent_images.push(out);
        }
        Ok(SentInput {
            prompt: sent_prompt,
            images: sent_images,
        })
    }

    /// What an encoder cache would see of an image: its decoded pixels (two files of one
    /// picture in other formats are one image to it). Each distinct file is decoded once; a
    /// file that does not decode is keyed by its bytes.
    fn pixel_key(&mut self, bytes: &[u8]) -> u64 {
        let file = content_hash(bytes);
        *self
            .pixel_keys
            .entry(file)
            .or_insert_with(|| match image::load_from_memory(bytes) {
                Ok(img) => {
                    let rgb = img.into_rgb8();
                    let mut h = DefaultHasher::new();
                    rgb.dimensions().hash(&mut h);
                    rgb.as_raw().hash(&mut h);
                    h.finish()
                }
                Err(_) => file,
            })
    }

    /// Records which cache workload the set is (see [`cache_sets::describe`]).
    pub fn set_cache_workload(&mut self, what: Option<String>) {
        self.policy.cache_workload = what;
    }

    /// Records the outcome of `--reset-cache`.
    pub fn set_cache_reset(&mut self, what: String) {
        self.policy.cache_reset = Some(what);
    }
}

fn owned(images: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    images
        .iter()
        .map(|&(m, b)| (m.to_owned(), b.to_vec()))
        .collect()
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// `bytes` decoded, the first four pixels of the top row set from `tag`, re-encoded in the
/// same format where the encoder supports it (else PNG); returns the MIME type and bytes.
pub fn alter_pixels(bytes: &[u8], tag: u64) -> Result<(String, Vec<u8>)> {
    let format = image::guess_format(bytes).context("cannot tell the image's format")?;
    let mut img = image::load_from_memory_with_format(bytes, format)
        .context("cannot decode the image to make a repeat unique")?
        .into_rgb8();
    let (w, h) = img.dimensions();
    let code = tag.to_le_bytes();
    for k in 0..4u32.min(w) {
        // Large steps, so a lossy re-encode keeps two tags apart.
        let v = code[k as usize];
        img.put_pixel(k, 0, image::Rgb([v, v.wrapping_mul(37), 255 - v]));
        if h > 1 {
            img.put_pixel(k, 1, image::Rgb([v, v.wrapping_mul(37), 255 - v]));
        }
    }
    let img = image::DynamicImage::ImageRgb8(img);
    let mut out = Cursor::new(Vec::new());
    let (format, mime) = match format {
        image::ImageFormat::Jpeg => (image::ImageFormat::Jpeg, "image/jpeg"),
        image::ImageFormat::Bmp => (image::ImageFormat::Bmp, "image/bmp"),
        _ => (image::ImageFormat::Png, "image/png"),
    };
    img.write_to(&mut out, format)
        .context("cannot re-encode the altered image")?;
    Ok((mime.to_owned(), out.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(img: &image::DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn sample(prompt: &str, fields: &[(&str, u64)]) -> Sample {
        Sample {
            index: 0,
            prompt: prompt.into(),
            images: Vec::new(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn shared_prefixes_stay_shared_within_a_pass_and_apart_between_passes() {
        let prefix = "the shared prefix";
        let set: Vec<Sample> = (0..3)
            .map(|j| {
                sample(
                    &format!("{prefix} suffix {j}"),
                    &[
                        (cache_sets::PREFIX_GROUP_FIELD, 0),
                        (cache_sets::PREFIX_CHARS_FIELD, prefix.len() as u64),
                    ],
                )
            })
            .collect();
        let mut u = UniqueInputs::new(false, None);
        let mut all = HashSet::new();
        let mut pass_starts = Vec::new();
        for pass in 0..3 {
            if pass == 0 {
                let warm = u.next_warm_up(&set[0], &[]).unwrap().prompt;
                assert_eq!(warm, format!("[w] {}", set[0].prompt));
                assert!(all.insert(warm));
            }
            let sent: Vec<String> = set
                .iter()
                .map(|x| u.next_for(x, &[]).unwrap().prompt)
                .collect();
            // Within a pass every prompt of the group starts the same way...
            let start = sent[0].split(" suffix").next().unwrap().to_string();
            assert!(sent.iter().all(|p| p.starts_with(&start)), "{sent:?}");
            pass_starts.push(start);
            for p in sent {
                assert!(all.insert(p.clone()), "repeated across passes: {p}");
            }
        }
        // ...and no two passes share their first characters; the warm-up request touched no
        // pass (the first pass went out unchanged, so its prefixes were cold).
        assert_eq!(pass_starts[0], prefix);
        assert_eq!(pass_starts[1], format!("[r1] {prefix}"));
        assert_eq!(pass_starts[2], format!("[r2] {prefix}"));
        assert_eq!(u.policy().prompts_prefixed, 7);
    }

    #[test]
    fn only_a_conversations_first_turn_is_made_unique() {
        let first = sample(
            "hello",
            &[
                (cache_sets::CONVERSATION_FIELD, 0),
                (cache_sets::TURN_FIELD, 0),
            ],
        );
        let later = sample(
            "and then?",
            &[
                (cache_sets::CONVERSATION_FIELD, 0),
                (cache_sets::TURN_FIELD, 1),
            ],
        );
        let mut u = UniqueInputs::new(false, None);
        assert_eq!(u.next_for(&first, &[]).unwrap().prompt, "hello");
        assert_eq!(u.next_for(&later, &[]).unwrap().prompt, "and then?");
        assert_ne!(u.next_for(&first, &[]).unwrap().prompt, "hello");
        assert_eq!(u.next_for(&later, &[]).unwrap().prompt, "and then?");
    }

    #[test]
    fn repeats_get_a_unique_prefix_and_altered_pixels() {
        let img = png(16, 8);
        let mut u = UniqueInputs::new(false, None);
        let mut prompts = HashSet::new();
        let mut images = HashSet::new();
        for _ in 0..5 {
            for p in ["a cat", "a dog"] {
                let s = u.next(p, &[("image/png", &img)]).unwrap();
                assert!(s.prompt.ends_with(p), "{}", s.prompt);
                assert!(
                    prompts.insert(s.prompt.clone()),
                    "prompt repeated: {}",
                    s.prompt
                );
                let [(mime, bytes)] = <[_; 1]>::try_from(s.images).unwrap();
                assert_eq!(mime, "image/png");
                let decoded = image::load_from_memory(&bytes).unwrap();
                assert_eq!((decoded.width(), decoded.height()), (16, 8));
                assert!(images.insert(bytes), "image repeated");
            }
        }
        let p = u.policy();
        assert_eq!(p.repeats, "unique");
        assert_eq!(p.prompts_prefixed, 8);
        assert_eq!(p.images_altered, 9);
        assert!(p.prefix_chars_added >= 8 * 4);
        // The first use of each input is sent as given.
        let mut fresh = UniqueInputs::new(false, None);
        assert_eq!(fresh.next("a cat", &[]).unwrap().prompt, "a cat");
        assert!(fresh.next("a cat", &[]).unwrap().prompt.starts_with("[1] "));
    }

    #[test]
    fn exact_repeats_are_kept_on_request() {
        let mut u = UniqueInputs::new(true, None);
        let a = u.next("same", &[("image/png", b"xx")]).unwrap();
        let b = u.next("same", &[("image/png", b"xx")]).unwrap();
        assert_eq!(a, b);
        assert_eq!(u.policy().repeats, "exact-repeats");
        assert_eq!(u.policy().prompts_prefixed, 0);
    }

    #[test]
    fn jpeg_repeats_stay_apart() {
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, 90])
        });
        let mut out = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        let jpg = out.into_inner();
        let a = alter_pixels(&jpg, 1).unwrap();
        let b = alter_pixels(&jpg, 2).unwrap();
        assert_eq!(a.0, "image/jpeg");
        assert_ne!(a.1, b.1);
        assert_ne!(a.1, jpg);
        let mut u = UniqueInputs::new(false, None);
        let keys = [u.pixel_key(&jpg), u.pixel_key(&a.1), u.pixel_key(&b.1)];
        assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
    }

    #[test]
    fn one_picture_in_two_formats_is_one_image() {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(12, 9, |x, y| {
            image::Rgb([x as u8 * 20, y as u8 * 25, 3])
        }));
        let mut bmp = Cursor::new(Vec::new());
        img.write_to(&mut bmp, image::ImageFormat::Bmp).unwrap();
        let (png, bmp) = (png_of(&img), bmp.into_inner());
        assert_ne!(png, bmp);
        let mut u = UniqueInputs::new(false, None);
        let first = u.next("a", &[("image/png", &png)]).unwrap();
        assert_eq!(first.images[0].1, png, "first use unchanged");
        let second = u.next("b", &[("image/bmp", &bmp)]).unwrap();
        let (mime, bytes) = second.images[0].clone();
        assert_eq!(mime, "image/bmp");
        assert_ne!(bytes, bmp, "the same pixels in another file are a repeat");
        assert_eq!(u.policy().images_altered, 1);
    }

    /// Every image of a request is kept in order, and each is made unique on its own: a repeat
    /// of an earlier request's image is altered, a new one is sent as given.
    #[test]
    fn each_image_of_a_request_is_kept_apart_on_its_own() {
        let (a, b, c) = (png(8, 6), png(6, 8), png(5, 7));
        let mut u = UniqueInputs::new(false, None);
        let first = u
            .next("p", &[("image/png", &a), ("image/png", &b)])
            .unwrap();
        assert_eq!(
            first.images,
            [
                ("image/png".to_string(), a.clone()),
                ("image/png".to_string(), b.clone())
            ]
        );
        let second = u
            .next("q", &[("image/png", &c), ("image/png", &a)])
            .unwrap();
        assert_eq!(second.images.len(), 2);
        assert_eq!(second.images[0].1, c, "a new image is sent as given");
        assert_ne!(second.images[1].1, a, "a repeated image is altered");
        let decoded = image::load_from_memory(&second.images[1].1).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (8, 6));
        assert_eq!(u.policy().images_altered, 1);
        let mut exact = UniqueInputs::new(true, None);
        let again = exact
            .next("p", &[("image/png", &a), ("image/png", &a)])
            .unwrap();
        assert_eq!(again.images[0], again.images[1]);
    }
}
