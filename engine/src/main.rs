fn main() {
    weir::cli::main()
}
