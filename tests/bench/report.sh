# report.sh -- sourced by the benchmarks under tests/bench.
# report SECTION FIGURE MEASURED PEER RATIO TARGET
#   appends one row (tab-separated) to $BENCH_REPORT when it is set, so that
#   scripts/bench can print every benchmark's figures as one table. PEER is the
#   peer's figure or the ideal ("-" when there is none); RATIO says how the
#   measured figure compares with the peer or the target ("-" when neither).
report() {
  [[ -n ${BENCH_REPORT:-} ]] || return 0
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" >>"$BENCH_REPORT"
}
