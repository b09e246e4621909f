//! Where the random weights of `random:<preset>` models are drawn.
//!
//! On the CPU they come from the seeded ChaCha stream every seeded choice in vlmbench uses, so a
//! seed gives the same weights on every machine. On a GPU they are drawn by the device's own
//! generator (cuRAND on CUDA), seeded the same way, straight into device memory: a 7 B preset
//! is 6.7 billion numbers, minutes of host time and 13.5 GB of host-to-device copies if drawn on
//! the host. A seed then gives the same weights on every run on that kind of device; CPU and
//! GPU weights differ (timing does not depend on weight values).

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use crate::rng::SeededRng;

/// A seeded source of uniform random weights for one device.
pub enum WeightRng {
    /// Drawn on the host (the CPU device); boxed, the generator's state is large.
    Host(Box<SeededRng>),
    /// Drawn by the device's generator, which [`WeightRng::new`] has seeded.
    Device,
}

impl WeightRng {
    /// A stream seeded with `seed` for tensors on `device`. On a GPU this reseeds the device's
    /// generator, so streams for one device must be used one after the other, not interleaved.
    pub fn new(seed: u64, device: &Device) -> Result<Self> {
        if device.is_cpu() {
            return Ok(Self::Host(Box::new(SeededRng::new(seed))));
        }
        device.set_seed(seed)?;
        Ok(Self::Device)
    }

    /// A tensor of `shape` in `dtype` on `device`, uniform with standard deviation `std`
    /// (uniform is several times cheaper to draw than normal and timing does not depend on the
    /// distribution). Drawn in f32, then converted where it lies.
    pub fn uniform(
        &mut self,
        shape: &[usize],
        std: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let half_width = (std * 3f64.sqrt()) as f32;
        match self {
            Self::Host(rng) => Ok(host_uniform(rng, shape, half_width)?
                .to_dtype(dtype)?
                .to_device(device)?),
            Self::Device => device_uniform(shape, half_width, dtype, device),
        }
    }
}

/// Four 16-bit draws per 64-bit word of the ChaCha stream, mapped to [-half_width, half_width].
fn host_uniform(rng: &mut SeededRng, shape: &[usize], half_width: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut data = Vec::with_capacity(n);
    while data.len() < n {
        let r = rng.next_u64();
        for k in 0..4 {
            if data.len() == n {
                break;
            }
            let bits = ((r >> (16 * k)) & 0xffff) as f32 / 65535.0;
            data.push((bits * 2.0 - 1.0) * half_width);
        }
    }
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// Uniform f32 drawn by the device's generator, then converted on the device: nothing crosses
/// the host. (cuRAND fills f32 and f64 only, hence the conversion.)
fn device_uniform(
    shape: &[usize],
    half_width: f32,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    Ok(Tensor::rand(-half_width, half_width, shape, device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The CPU stream is pinned: these are the values random presets had before GPU drawing
    /// existed, so CPU weights (and every CPU figure taken with them) stay comparable.
    #[test]
    fn cpu_stream_is_pinned_and_seeded() {
        let mut rng = WeightRng::new(1, &Device::Cpu).unwrap();
        assert!(matches!(rng, WeightRng::Host(_)));
        let t = rng
            .uniform(&[2, 3], 0.02, DType::F32, &Device::Cpu)
            .unwrap();
        let expected: [f32; 6] = [
            0.02267167,
            -0.0010714481,
            0.029467197,
            0.0051606046,
            0.019613257,
            -0.01507163,
        ];
        assert_eq!(values(&t), expected);
        let again = WeightRng::new(1, &Device::Cpu)
            .unwrap()
            .uniform(&[2, 3], 0.02, DType::F32, &Device::Cpu)
            .unwrap();
        assert_eq!(values(&t), values(&again));
        let other = WeightRng::new(2, &Device::Cpu)
            .unwrap()
            .uniform(&[2, 3], 0.02, DType::F32, &Device::Cpu)
            .unwrap();
        assert_ne!(values(&t), values(&other));
    }

    #[test]
    fn cpu_stream_converts_to_the_requested_dtype() {
        let mut rng = WeightRng::new(4, &Device::Cpu).unwrap();
        let t = rng.uniform(&[64], 0.02, DType::F16, &Device::Cpu).unwrap();
        assert_eq!(t.dtype(), DType::F16);
        let mut f32s = WeightRng::new(4, &Device::Cpu).unwrap();
        let reference = values(&f32s.uniform(&[64], 0.02, DType::F32, &Device::Cpu).unwrap());
        let halves = values(&t.to_dtype(DType::F32).unwrap());
        for (h, r) in halves.iter().zip(&reference) {
            assert!((h - r).abs() <= r.abs() * 1e-3 + 1e-7, "{h} vs {r}");
        }
    }

    /// The drawing GPUs use (device generator, f32, converted in place), run on the CPU device:
    /// shape, dtype and bounds are what the host stream gives.
    #[test]
    fn device_drawing_has_the_shape_dtype_and_bounds_of_the_host_stream() {
        let half_width = (0.02f64 * 3f64.sqrt()) as f32;
        let t = device_uniform(&[8, 32], half_width, DType::F16, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[8, 32]);
        assert_eq!(t.dtype(), DType::F16);
        let v = values(&t.to_dtype(DType::F32).unwrap());
        assert!(v.iter().all(|x| x.abs() <= half_width * 1.001), "{v:?}");
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        // Uniform on [-w, w] has standard deviation w / sqrt(3) = 0.02.
        assert!((var.sqrt() - 0.02).abs() < 0.004, "std {}", var.sqrt());
    }
}
