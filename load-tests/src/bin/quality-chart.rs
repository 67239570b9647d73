//! The call-quality chart of REPORT.md (issue 15): the frames per second the patient's
//! page decoded (or the lines of the picture, `--metric height`), second by second,
//! through our SFU and in a direct call, for some
//! conditions of `web-client/tests/quality.test.mjs`. Reads the `quality-samples` lines
//! that `load-tests/measure-all` keeps in `results/quality.txt`.
//!
//!   target/debug/quality-chart --input load-tests/results/quality.txt \
//!       --out load-tests/quality-chart.png

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use load_tests::chart;

#[derive(Parser, Debug)]
#[command(
    about = "Draws received fps (or picture height) over time, ours and direct, from quality.test.mjs's samples"
)]
struct Args {
    /// The lines of a full quality run (`quality-samples kind=… condition=… run=… [...]`).
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// The conditions to draw, each for both kinds (or the one measured).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cap350-lifted,loss5-rtt150"
    )]
    conditions: Vec<String>,
    /// Which run of each to draw.
    #[arg(long, default_value_t = 1)]
    run: u32,
    /// What to draw of each sample: `fps` (frames decoded a second) or `height` (lines).
    #[arg(long, default_value = "fps", value_parser = ["fps", "height"])]
    metric: String,
    #[arg(long, default_value = chart::DEFAULT_FONT)]
    font: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let mut series = Vec::new();
    for condition in &args.conditions {
        let drawn = series.len();
        for kind in ["ours", "direct"] {
            let head = format!(
                "quality-samples kind={kind} condition={condition} run={} ",
                args.run
            );
            // A condition measured for one kind only is drawn for that one.
            let Some(line) = text.lines().find_map(|l| l.strip_prefix(&head)) else {
                continue;
            };
            let samples: Vec<serde_json::Value> = serde_json::from_str(line)
                .with_context(|| format!("samples of {kind} {condition}"))?;
            let points = samples
                .iter()
                .filter_map(|s| Some((s.get("t")?.as_f64()?, s.get(&args.metric)?.as_f64()?)))
                .collect();
            series.push(chart::Series {
                name: format!("{kind}: {condition}"),
                points,
            });
        }
        if series.len() == drawn {
            anyhow::bail!("no samples for {condition} run {}", args.run);
        }
    }
    let labels = chart::Labels {
        title: "Video decoded by the patient's page over an impaired link",
        x: "seconds into the window (cap350-lifted: cap lifted at the middle)",
        y: if args.metric == "height" {
            "lines of the picture decoded"
        } else {
            "frames per second"
        },
    };
    chart::draw(&args.out, &args.font, &labels, &series)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
