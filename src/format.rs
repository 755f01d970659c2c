//! How sizes, ages and tables read on a terminal, the same for every command, the executor's
//! messages and `status`.

pub fn format_size(size_mb: Option<u64>) -> String {
    match size_mb {
        None => "-".into(),
        Some(mb) if mb >= 1024 => format!("{:.1} GiB", mb as f64 / 1024.0),
        Some(mb) => format!("{mb} MiB"),
    }
}

pub fn format_age(age: chrono::Duration) -> String {
    let secs = age.num_seconds().max(0);
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h{m:02}m"),
        (d, h, _) => format!("{d}d{h:02}h"),
    }
}

pub fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}
