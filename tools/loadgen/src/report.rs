//! The end-of-run report: human text, the `--json` object and the `.hgrm` file.
//!
//! Owns: `Report` (the merged measured `Stats`, the measured duration, the
//! prefill summary and the flags that shaped the run) and its three
//! renderings. Invariants: `ops` counts answers only (`ERR_FILE_NOT_FOUND`
//! and `ERR_VERSION` included, errors excluded); `throughput` is `ops` over
//! the measured duration (start of the measured phase to the last worker
//! done, so the drain is included); percentiles come from the HdrHistogram of
//! microseconds, 0 when nothing was answered; the JSON is one line. Leaves
//! out: collecting the numbers (see `run`).

use std::fmt::Write as _;
use std::io::{self, Write};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::config::{Config, Kind};
use crate::limits::HISTOGRAM_SIGNIFICANT_FIGURES;
use crate::stats::{ErrorKind, Stats};

/// How the unmeasured prefill went.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefillSummary {
    pub keys: u64,
    /// Keys whose write was answered `OK`.
    pub written: u64,
    pub errors: u64,
    pub duration_s: f64,
}

/// Everything a finished run reports.
#[derive(Clone, Debug)]
pub struct Report {
    pub config: Config,
    /// Worker threads used.
    pub threads: usize,
    /// Measured phase: its start to the moment the last worker finished.
    pub duration_s: f64,
    /// The measured phase, all workers merged.
    pub stats: Stats,
    pub prefill: Option<PrefillSummary>,
}

/// The latency summary the report prints.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Percentiles {
    /// The summary of `histogram` (all zero when empty).
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles {
                p50_us: 0,
                p90_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0,
                mean_us: 0.0,
            };
        }
        Percentiles {
            p50_us: histogram.value_at_quantile(0.5),
            p90_us: histogram.value_at_quantile(0.9),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
            mean_us: histogram.mean(),
        }
    }
}

impl Report {
    /// Answered commands.
    pub fn ops(&self) -> u64 {
        self.stats.ops()
    }

    /// Failed commands.
    pub fn errors(&self) -> u64 {
        self.stats.error_total()
    }

    /// Answers per second of measured time.
    pub fn throughput(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.ops() as f64 / self.duration_s
        } else {
            0.0
        }
    }

    /// Latency percentiles over every answer.
    pub fn percentiles(&self) -> Percentiles {
        Percentiles::of(&self.stats.latency_us)
    }

    /// The human-readable summary (several lines, ending in a newline).
    pub fn text(&self) -> String {
        let config = &self.config;
        let addresses: Vec<String> = config.addresses.iter().map(ToString::to_string).collect();
        let latency = self.percentiles();
        let mut text = String::new();
        let _ = writeln!(
            text,
            "loadgen: {} | {} clients x pipeline {} on {} threads{} | mix {} | size {} B | {} keys ({})",
            addresses.join(","),
            config.clients,
            config.pipeline,
            self.threads,
            if config.spread { ", spread" } else { "" },
            config.mix,
            config.size_bytes,
            config.keys,
            config.key_dist
        );
        if let Some(rate) = config.rate {
            let _ = writeln!(
                text,
                "open loop  {rate} ops/s scheduled, latency from the intended start; {} due but never sent (no free pipeline slot)",
                self.stats.unsent
            );
        }
        if let Some(prefill) = &self.prefill {
            let _ = writeln!(
                text,
                "prefill    {} of {} keys written in {:.2} s, {} errors (not measured)",
                prefill.written, prefill.keys, prefill.duration_s, prefill.errors
            );
        }
        let _ = writeln!(text, "duration   {:.3} s", self.duration_s);
        let _ = writeln!(
            text,
            "ops        {} ({:.1} ops/s)",
            self.ops(),
            self.throughput()
        );
        let _ = writeln!(
            text,
            "latency us p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {:.1})",
            latency.p50_us,
            latency.p90_us,
            latency.p99_us,
            latency.p999_us,
            latency.max_us,
            latency.mean_us
        );
        for kind in Kind::ALL {
            let kind_stats = &self.stats.kinds[kind.index()];
            if kind_stats.sent == 0 {
                continue;
            }
            let kind_latency = Percentiles::of(&kind_stats.latency_us);
            let _ = writeln!(
                text,
                "  {:<8} sent {} ok {} not_found {} version_mismatch {} errors {} | p50 {} p99 {} max {} us",
                kind.name(),
                kind_stats.sent,
                kind_stats.success,
                kind_stats.not_found,
                kind_stats.version_mismatch,
                kind_stats.errors,
                kind_latency.p50_us,
                kind_latency.p99_us,
                kind_latency.max_us
            );
        }
        let by_kind: Vec<String> = ErrorKind::ALL
            .iter()
            .map(|&error| format!("{} {}", error.name(), self.stats.error_count(error)))
            .collect();
        let _ = writeln!(
            text,
            "errors     {} ({})",
            self.errors(),
            by_kind.join(", ")
        );
        let _ = writeln!(
            text,
            "connections opened {}, connect failures {}, redirects followed {} (whole run)",
            self.stats.connections_opened,
            self.stats.connect_failures,
            self.stats.redirects_followed
        );
        text
    }

    /// The `--json` object.
    pub fn to_json(&self) -> Value {
        let latency = self.percentiles();
        let config = &self.config;
        let mut errors_by_kind = Map::new();
        for error in ErrorKind::ALL {
            errors_by_kind.insert(
                error.name().to_string(),
                json!(self.stats.error_count(error)),
            );
        }
        let mut mix = Map::new();
        let mut kinds = Map::new();
        for kind in Kind::ALL {
            mix.insert(kind.name().to_string(), json!(config.mix.weight(kind)));
            let kind_stats = &self.stats.kinds[kind.index()];
            let kind_latency = Percentiles::of(&kind_stats.latency_us);
            kinds.insert(
                kind.name().to_string(),
                json!({
                    "sent": kind_stats.sent,
                    "ok": kind_stats.success,
                    "not_found": kind_stats.not_found,
                    "version_mismatch": kind_stats.version_mismatch,
                    "errors": kind_stats.errors,
                    "p50_us": kind_latency.p50_us,
                    "p99_us": kind_latency.p99_us,
                    "max_us": kind_latency.max_us,
                }),
            );
        }
        let prefill = self.prefill.as_ref().map(|prefill| {
            json!({
                "keys": prefill.keys,
                "written": prefill.written,
                "errors": prefill.errors,
                "duration_s": prefill.duration_s,
            })
        });
        json!({
            "ops": self.ops(),
            "errors": self.errors(),
            "duration_s": self.duration_s,
            "throughput": self.throughput(),
            "p50_us": latency.p50_us,
            "p90_us": latency.p90_us,
            "p99_us": latency.p99_us,
            "p999_us": latency.p999_us,
            "max_us": latency.max_us,
            "mean_us": latency.mean_us,
            "errors_by_kind": errors_by_kind,
            "mix": mix,
            "kinds": kinds,
            "addr": config.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "spread": config.spread,
            "rate": config.rate,
            "total": config.total,
            "unsent": self.stats.unsent,
            "key_dist": config.key_dist.to_string(),
            "clients": config.clients,
            "pipeline": config.pipeline,
            "threads": self.threads,
            "size": config.size_bytes,
            "keys": config.keys,
            "timeout_ms": config.timeout_ms,
            "connections_opened": self.stats.connections_opened,
            "connect_failures": self.stats.connect_failures,
            "redirects_followed": self.stats.redirects_followed,
            "prefill": prefill,
        })
    }

    /// Writes the latency distribution in HdrHistogram's classic `.hgrm` text format (microseconds).
    pub fn write_hgrm(&self, output: &mut dyn Write) -> io::Result<()> {
        write_hgrm(&self.stats.latency_us, output)
    }
}

/// Sub-buckets per bucket of a histogram with loadgen's precision (as HdrHistogram computes it).
fn sub_bucket_count() -> u64 {
    let single_unit_resolution = 2 * 10u64.pow(u32::from(HISTOGRAM_SIGNIFICANT_FIGURES));
    single_unit_resolution.next_power_of_two()
}

/// `outputPercentileDistribution` of HdrHistogram (5 ticks per half distance, unit scale 1).
pub fn write_hgrm(histogram: &Histogram<u64>, output: &mut dyn Write) -> io::Result<()> {
    writeln!(
        output,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let value = step.value_iterated_to() as f64;
        if quantile < 1.0 {
            writeln!(
                output,
                "{value:>12.3} {quantile:>2.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(output, "{value:>12.3} {quantile:>2.12} {total:>10}")?;
        }
    }
    let (mean, deviation) = if histogram.is_empty() {
        (0.0, 0.0)
    } else {
        (histogram.mean(), histogram.stdev())
    };
    writeln!(
        output,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {deviation:>12.3}]"
    )?;
    writeln!(
        output,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64,
        histogram.len()
    )?;
    writeln!(
        output,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        sub_bucket_count()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_latency_histogram;

    #[test]
    fn hgrm_has_header_rows_and_footer() {
        let mut histogram = new_latency_histogram();
        for value in 1..=1000u64 {
            histogram.saturating_record(value);
        }
        let mut output = Vec::new();
        write_hgrm(&histogram, &mut output).expect("writing to a Vec");
        let text = String::from_utf8(output).expect("ascii");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("Percentile") && lines[0].contains("1/(1-Percentile)"));
        assert!(lines.iter().any(|line| line.contains("0.500000000000")));
        let last_row = lines[lines.len() - 4];
        assert!(
            last_row.contains("1.000000000000") && last_row.trim_end().ends_with("1000"),
            "{last_row}"
        );
        assert!(text.contains("Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
    }
}
