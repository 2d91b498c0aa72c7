//! Figures as PNG bytes, for the report: crops as colour composites, importance maps as heat
//! overlays, and montages. No text is drawn; the report's captions say what each row and each
//! tile is (it cuts the tiles back out of a grid with [`decode_png`] and [`Rgb::crop`]).

/// An RGB image, row-major.
pub struct Rgb {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<[u8; 3]>,
}

impl Rgb {
    pub fn new(width: usize, height: usize) -> Self {
        Rgb {
            width,
            height,
            pixels: vec![[255, 255, 255]; width * height],
        }
    }

    /// Copies `tile` with its top-left corner at (x, y).
    pub fn paste(&mut self, tile: &Rgb, x: usize, y: usize) {
        for ty in 0..tile.height.min(self.height.saturating_sub(y)) {
            for tx in 0..tile.width.min(self.width.saturating_sub(x)) {
                self.pixels[(y + ty) * self.width + x + tx] = tile.pixels[ty * tile.width + tx];
            }
        }
    }

    /// The `w` × `h` rectangle with its top-left corner at (x, y), clipped to the image.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Rgb {
        let w = w.min(self.width.saturating_sub(x));
        let h = h.min(self.height.saturating_sub(y));
        let mut out = Rgb::new(w, h);
        for ty in 0..h {
            for tx in 0..w {
                out.pixels[ty * w + tx] = self.pixels[(y + ty) * self.width + x + tx];
            }
        }
        out
    }

    /// Enlarged `k` times by nearest neighbour: every pixel becomes a k × k square, so small
    /// crops stay crisp instead of being blurred by a viewer's smoothing.
    pub fn upscale(&self, k: usize) -> Rgb {
        let k = k.max(1);
        let (w, h) = (self.width * k, self.height * k);
        let pixels = (0..w * h)
            .map(|i| self.pixels[(i / w / k) * self.width + (i % w) / k])
            .collect();
        Rgb {
            width: w,
            height: h,
            pixels,
        }
    }

    pub fn png(&self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        let flat: Vec<u8> = self.pixels.iter().flatten().copied().collect();
        w.write_image_data(&flat)?;
        w.finish()?;
        Ok(out)
    }
}

/// An 8-bit PNG (grey, grey + alpha, RGB or RGBA; alpha dropped) as an [`Rgb`].
pub fn decode_png(bytes: &[u8]) -> anyhow::Result<Rgb> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info()?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| anyhow::anyhow!("PNG too large"))?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf)?;
    let channels = info.color_type.samples();
    let pixels = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| match channels {
            1 | 2 => [p[0], p[0], p[0]],
            _ => [p[0], p[1], p[2]],
        })
        .collect();
    Ok(Rgb {
        width: info.width as usize,
        height: info.height as usize,
        pixels,
    })
}

/// The whole factor that brings a `size`-pixel tile to about 144 pixels (1 for large tiles).
pub fn zoom_for(size: usize) -> usize {
    (144 / size.max(1)).clamp(1, 8)
}

/// Values mapped to [0, 1] between their 1st and 99.5th percentiles.
fn stretch(v: &[f32]) -> Vec<f32> {
    let mut s: Vec<f32> = v.to_vec();
    s.sort_by(f32::total_cmp);
    let lo = s[(s.len() as f64 * 0.01) as usize];
    let hi = s[((s.len() as f64 * 0.995) as usize).min(s.len() - 1)];
    let range = (hi - lo).max(1e-6);
    v.iter()
        .map(|&x| ((x - lo) / range).clamp(0.0, 1.0))
        .collect()
}

/// A crop [C, H, W] as a composite: one channel grey; two or more as magenta (channel 1,
/// usually DNA) and green (channel 2), a pairing readable with every colour vision.
pub fn composite(crop: &[f32], shape: &[usize]) -> Rgb {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let chans: Vec<Vec<f32>> = (0..c.min(2))
        .map(|k| stretch(&crop[k * h * w..(k + 1) * h * w]))
        .collect();
    let pixels = (0..h * w)
        .map(|i| {
            let a = (chans[0][i] * 255.0) as u8;
            if chans.len() == 1 {
                [a, a, a]
            } else {
                let g = (chans[1][i] * 255.0) as u8;
                [a, g, a]
            }
        })
        .collect();
    Rgb {
        width: w,
        height: h,
        pixels,
    }
}

/// A "hot" colour map: black, red, yellow, white.
fn hot(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0) * 3.0;
    [
        t.min(1.0),
        (t - 1.0).clamp(0.0, 1.0),
        (t - 2.0).clamp(0.0, 1.0),
    ]
}

/// An importance map [H, W] in the hot colour map over the crop's grey first channel, scaled
/// to the map's own 99th percentile (each map shows where, not how much).
pub fn overlay(crop: &[f32], shape: &[usize], map: &[f32]) -> Rgb {
    let (h, w) = (shape[1], shape[2]);
    let grey = stretch(&crop[..h * w]);
    let mut sorted = map.to_vec();
    sorted.sort_by(f32::total_cmp);
    let top = sorted[((sorted.len() as f64 * 0.99) as usize).min(sorted.len() - 1)].max(1e-12);
    let pixels = (0..h * w)
        .map(|i| {
            let m = (map[i] / top).clamp(0.0, 1.0);
            let heat = hot(m);
            let alpha = 0.75 * m.sqrt();
            let mut px = [0u8; 3];
            for k in 0..3 {
                let base = grey[i] * 0.6;
                px[k] = (((1.0 - alpha) * base + alpha * heat[k]) * 255.0) as u8;
            }
            px
        })
        .collect();
    Rgb {
        width: w,
        height: h,
        pixels,
    }
}

/// Tiles in rows, `gap` white pixels apart; rows may have different lengths.
pub fn grid(rows: &[Vec<Rgb>], gap: usize) -> Rgb {
    let tw = rows.iter().flatten().map(|t| t.width).max().unwrap_or(1);
    let th = rows.iter().flatten().map(|t| t.height).max().unwrap_or(1);
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut out = Rgb::new(
        cols * (tw + gap) + gap,
        rows.len().max(1) * (th + gap) + gap,
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, tile) in row.iter().enumerate() {
            out.paste(tile, gap + c * (tw + gap), gap + r * (th + gap));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_come_back_out_of_a_grid_pixel_for_pixel() {
        let tile = |v: u8| Rgb {
            width: 3,
            height: 2,
            pixels: (0..6).map(|i| [v, i as u8, 255 - v]).collect(),
        };
        let big = tile(7).upscale(4);
        assert_eq!((big.width, big.height), (12, 8));
        // Nearest neighbour: each source pixel is a 4 × 4 block.
        assert_eq!(big.pixels[0], big.pixels[3 + 3 * 12]);
        assert_eq!(big.pixels[4], [7, 1, 248]);
        let g = grid(&[vec![tile(1), tile(2)], vec![tile(3)]], 2);
        let back = decode_png(&g.png().unwrap()).unwrap();
        assert_eq!((back.width, back.height), (g.width, g.height));
        let t = back.crop(2 + (3 + 2), 2, 3, 2);
        assert_eq!(t.pixels, tile(2).pixels);
        assert_eq!(back.crop(2, 2 + (2 + 2), 3, 2).pixels, tile(3).pixels);
        assert_eq!(zoom_for(48), 3);
        assert_eq!(zoom_for(200), 1);
    }
}
