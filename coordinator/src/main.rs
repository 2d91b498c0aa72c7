fn main() {
    let path = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    match plateflow::spec::load(&path) {
        Ok(p) => println!("{p:#?}"),
        Err(e) => println!("{e}"),
    }
}
