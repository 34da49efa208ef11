//! Loss curves as a PNG, drawn with `plotters`: a title, labelled axes with ticks (a log scale for
//! the loss when every value is positive), a legend, any number of curves (training loss as a
//! line, held-out loss as a line with markers). Text uses a font compiled in (DejaVu Sans, ASCII
//! subset, `fonts/`), so no system font is needed. Not a general plotting API.

use lapidary_core::{Error, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

/// DejaVu Sans cut to printable ASCII (its licence: `fonts/LICENSE-DejaVu`).
const FONT: &[u8] = include_bytes!("../fonts/DejaVuSans-ascii.ttf");
const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;

/// One curve: (step, loss) points, a legend label, a colour; held-out curves get markers.
#[derive(Clone, Debug)]
pub struct Curve {
    /// Legend text.
    pub label: String,
    /// (optimizer step, loss); non-finite losses are left out.
    pub points: Vec<(f64, f64)>,
    /// RGB.
    pub colour: (u8, u8, u8),
    /// Drawn with a marker at each point (held-out evaluations are sparse).
    pub markers: bool,
}

/// Colours for runs drawn together (training and held-out curves of one run share one).
pub const PALETTE: [(u8, u8, u8); 4] = [(31, 100, 200), (230, 120, 20), (40, 160, 60), (150, 60, 180)];

/// Registers the font once per process; an error on every call when it does not parse.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let parsed =
        *REGISTERED.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    if parsed { Ok(()) } else { Err(Error::invalid("the plot font compiled into lapidary-train does not parse")) }
}

/// Draws `curves` under `title` into the PNG at `path` (written to a temporary file and renamed).
pub fn loss_curves(path: &Path, title: &str, curves: &[Curve]) -> Result<()> {
    register_font()?;
    let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    draw(&mut pixels, title, curves)
        .map_err(|e| Error::invalid(format!("{}: cannot draw the plot: {e}", path.display())))?;
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels).expect("the buffer has WIDTH x HEIGHT pixels");
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| Error::invalid(format!("{}: cannot encode the plot: {e}", path.display())))?;
    lapidary_core::fsio::write_atomic(path, png.get_ref())
}

/// The step range, the loss range, and whether the loss axis is logarithmic.
type Ranges = ((f64, f64), (f64, f64), bool);

/// The axes' ranges: steps from the first to the last point, losses padded a little (by a factor
/// on a log scale). `None` when there is no finite point.
fn ranges(curves: &[Curve]) -> Option<Ranges> {
    let pts = curves.iter().flat_map(|c| c.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return None;
    }
    let log = y0 > 0.0;
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let (y0, y1) = if log {
        let (a, b) = (y0.ln(), y1.ln().max(y0.ln() + 0.1));
        let pad = (b - a) * 0.05;
        ((a - pad).exp(), (b + pad).exp())
    } else {
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        (y0 - pad, y1 + pad)
    };
    Some(((x0, x1), (y0, y1), log))
}

/// plotters' errors borrow the backend; they are kept as text.
type Drawn = std::result::Result<(), String>;

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn draw(pixels: &mut [u8], title: &str, curves: &[Curve]) -> Drawn {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(text)?;
    let Some(((x0, x1), (y0, y1), log)) = ranges(curves) else {
        root.titled(&format!("{title} (no finite loss recorded)"), ("sans-serif", 22)).map_err(text)?;
        root.present().map_err(text)?;
        return Ok(());
    };
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 22)).margin(16).x_label_area_size(44).y_label_area_size(64);
    if log {
        let mut chart = builder.build_cartesian_2d(x0..x1, (y0..y1).log_scale()).map_err(text)?;
        axes_and_curves(&mut chart, "loss (log scale)", curves)?;
    } else {
        let mut chart = builder.build_cartesian_2d(x0..x1, y0..y1).map_err(text)?;
        axes_and_curves(&mut chart, "loss", curves)?;
    }
    root.present().map_err(text)?;
    Ok(())
}

/// The mesh with its labels, the curves, the legend: the same on a linear and a log loss axis.
fn axes_and_curves<'a, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    y_desc: &str,
    curves: &[Curve],
) -> Drawn
where
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("optimizer step")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| loss_label(*v))
        .draw()
        .map_err(text)?;
    for c in curves {
        series(chart, c)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(text)
}

/// A tick label with as many decimals as its size needs: 8, 2.5, 0.25, 0.031.
fn loss_label(v: f64) -> String {
    let decimals = if v.abs() >= 10.0 || v == 0.0 { 0 } else { (1.0 - v.abs().log10().floor()).max(1.0) as usize };
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

fn series<'a, X, Y>(chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>, c: &Curve) -> Drawn
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let colour = RGBColor(c.colour.0, c.colour.1, c.colour.2);
    let pts: Vec<(f64, f64)> = c.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let width = if c.markers { 2 } else { 1 };
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(width)))
        .map_err(text)?
        .label(c.label.clone())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(width)));
    if c.markers {
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(label: &str, points: Vec<(f64, f64)>, markers: bool) -> Curve {
        Curve { label: label.into(), points, colour: PALETTE[0], markers }
    }

    #[test]
    fn draws_curves_text_and_a_legend_into_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let train: Vec<(f64, f64)> = (1..=50).map(|s| (s as f64, 6.0 / s as f64 + 0.05 * (s % 3) as f64)).collect();
        let eval = vec![(0.0, 6.5), (25.0, 0.4), (50.0, 0.2)];
        loss_curves(&path, "Loss", &[curve("training", train, false), curve("held-out", eval, true)]).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        let coloured = img.pixels().filter(|p| p.0 == [31, 100, 200]).count();
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
        assert!(coloured > 200, "curve pixels: {coloured}");
        assert!(dark > 500, "text and axes pixels: {dark}");
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, ["loss.png"], "no temporary file is left");
    }

    #[test]
    fn ranges_pad_the_losses_and_use_a_log_scale_only_for_positive_ones() {
        let ((x0, x1), (y0, y1), log) = ranges(&[curve("a", vec![(0.0, 1.0), (10.0, 100.0)], false)]).unwrap();
        assert_eq!((x0, x1), (0.0, 10.0));
        assert!(log && y0 < 1.0 && y0 > 0.5 && y1 > 100.0 && y1 < 200.0, "{y0} {y1}");
        let (_, (y0, _), log) = ranges(&[curve("a", vec![(0.0, 0.0), (1.0, 2.0)], false)]).unwrap();
        assert!(!log && y0 < 0.0);
        let (x, _, _) = ranges(&[curve("a", vec![(3.0, 1.0), (4.0, f64::NAN)], false)]).unwrap();
        assert_eq!(x, (3.0, 4.0), "a single finite step still spans the axis");
        assert!(ranges(&[curve("a", vec![(1.0, f64::INFINITY)], false)]).is_none());
    }

    #[test]
    fn tick_labels_keep_the_digits_that_matter() {
        assert_eq!(loss_label(8.0), "8");
        assert_eq!(loss_label(2.5), "2.5");
        assert_eq!(loss_label(0.25), "0.25");
        assert_eq!(loss_label(0.0312), "0.031");
        assert_eq!(loss_label(12.4), "12");
        assert_eq!(loss_label(0.0), "0");
        assert_eq!(loss_label(-1.5), "-1.5");
    }

    #[test]
    fn a_plot_without_finite_points_is_still_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        loss_curves(&path, "Loss", &[curve("training", vec![(1.0, f64::NAN)], false)]).unwrap();
        assert!(image::open(&path).is_ok());
    }
}
