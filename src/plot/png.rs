//! SVG → PNG with resvg (pure Rust). Text needs fonts: the system's are loaded once per
//! renderer; without any, the PNG is still written, without text, and a warning says so.

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use resvg::{tiny_skia, usvg};

/// PNGs are drawn at twice the SVG size so text stays sharp on high-density screens.
pub const PNG_SCALE: f32 = 2.0;

/// Families tried for the SVG's generic `sans-serif`, best first.
const SANS: [&str; 4] = ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"];

pub struct PngRenderer {
    options: usvg::Options<'static>,
    /// Whether any font was found (no fonts: text is left out of the PNG).
    pub has_fonts: bool,
}

impl PngRenderer {
    /// Loads the system fonts (a few milliseconds to a second, depending on how many there are).
    pub fn new() -> Self {
        let mut db = usvg::fontdb::Database::new();
        db.load_system_fonts();
        let families: Vec<String> = db
            .faces()
            .flat_map(|f| f.families.iter().map(|(name, _)| name.clone()))
            .collect();
        let sans = SANS
            .iter()
            .find(|want| families.iter().any(|f| f == *want))
            .map(|s| s.to_string())
            .or_else(|| families.first().cloned());
        let mut options = usvg::Options::default();
        if let Some(family) = &sans {
            db.set_sans_serif_family(family.clone());
            options.font_family = family.clone();
        }
        options.fontdb = Arc::new(db);
        Self {
            options,
            has_fonts: sans.is_some(),
        }
    }

    /// Renders one SVG document to PNG bytes at [`PNG_SCALE`].
    pub fn render(&self, svg: &str) -> Result<Vec<u8>> {
        let tree = usvg::Tree::from_str(svg, &self.options).context("cannot parse the SVG")?;
        let size = tree
            .size()
            .to_int_size()
            .scale_by(PNG_SCALE)
            .ok_or_else(|| anyhow!("the chart has no area"))?;
        let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
            .ok_or_else(|| anyhow!("cannot allocate a {}x{} image", size.width(), size.height()))?;
        pixmap.fill(tiny_skia::Color::WHITE);
        resvg::render(
            &tree,
            tiny_skia::Transform::from_scale(PNG_SCALE, PNG_SCALE),
            &mut pixmap.as_mut(),
        );
        pixmap.encode_png().context("cannot encode the PNG")
    }
}

impl Default for PngRenderer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::svg::{Axis, Chart, Mark, HEIGHT, WIDTH};

    #[test]
    fn png_decodes_at_twice_the_svg_size() {
        let chart = Chart {
            id: "p".into(),
            title: "TTFT".into(),
            subtitle: None,
            x: Axis::linear("input tokens", 0.0, 100.0),
            y: Axis::linear("TTFT (ms)", 0.0, 50.0),
            marks: vec![Mark::Points {
                points: vec![(10.0, 10.0), (90.0, 45.0)],
                color: "#e15759",
                radius: 4.0,
                opacity: 1.0,
            }],
            legend: Vec::new(),
        };
        let png = PngRenderer::new().render(&chart.to_svg()).unwrap();
        let img = image::load_from_memory_with_format(&png, image::ImageFormat::Png)
            .unwrap()
            .to_rgba8();
        assert_eq!(img.width(), (WIDTH * PNG_SCALE as f64) as u32);
        assert_eq!(img.height(), (HEIGHT * PNG_SCALE as f64) as u32);
        // The background is white and the red dots are there.
        assert_eq!(img.get_pixel(2, 2).0, [255, 255, 255, 255]);
        let red = img
            .pixels()
            .filter(|p| p.0[0] > 200 && p.0[1] < 120 && p.0[2] < 120)
            .count();
        assert!(red > 50, "{red} red pixels");
    }
}
