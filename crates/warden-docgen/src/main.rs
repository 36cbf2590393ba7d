//! `warden-docgen OUT_DIR`: writes the man pages (`OUT_DIR/BIN/man/*.1`) and the bash, zsh and
//! fish completions (`OUT_DIR/BIN/{bash,zsh,fish}/`) of the four binaries. `dist/deb/build` runs
//! it and packages what it wrote.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        anyhow::bail!("usage: warden-docgen OUT_DIR");
    };
    let written = warden_docgen::write_all(&PathBuf::from(out))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}
