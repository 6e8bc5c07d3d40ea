# Sourced by common.sh. launch_checked runs a launcher command (deepspeed, torchrun, ...) and returns a
# non-zero status whenever training did not end well, also where the launcher says 0: DeepSpeed's runner
# exits 0 when its `deepspeed.launcher.launch` child is killed by a signal. Rank 0 writes
# "running PID" to $MEGATRON_EXIT_STATUS_FILE when it starts and its exit status when it ends (README
# "Signals and launcher death"). A launcher that returns while rank 0 still runs (it was killed; the
# training processes then save and stop) is followed by a wait for rank 0; then a run that wrote no
# status, or not 0, has failed.
launch_checked() {
  local status_file status recorded pid
  status_file=$(mktemp)
  MEGATRON_EXIT_STATUS_FILE=$status_file "$@" && status=0 || status=$?
  read -r recorded pid < "$status_file" || true
  if [ "$recorded" = running ] && kill -0 "$pid" 2>/dev/null; then
    echo "the launcher exited ($status) while training (rank 0, pid $pid) still runs: waiting for it" >&2
    while kill -0 "$pid" 2>/dev/null; do sleep 1; done
    read -r recorded pid < "$status_file" || true
  fi
  rm -f "$status_file"
  if [ "$status" -eq 0 ]; then
    if ! [[ "$recorded" =~ ^[0-9]+$ ]]; then
      echo "error: the launcher exited 0 but training did not finish (its processes were killed?)" >&2
      return 1
    fi
    status=$recorded
  fi
  return "$status"
}
