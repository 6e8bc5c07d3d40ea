# Sourced by common.sh. launch_checked runs a launcher command (deepspeed, torchrun, ...) and returns a
# non-zero status whenever training did not end well, also where the launcher says 0: DeepSpeed's runner
# exits 0 when its `deepspeed.launcher.launch` child is killed by a signal. Rank 0 writes its exit status
# to $MEGATRON_EXIT_STATUS_FILE (README "Fault handling"); a run that wrote none, or not 0, failed.
launch_checked() {
  local status_file status
  status_file=$(mktemp)
  : > "$status_file"
  MEGATRON_EXIT_STATUS_FILE=$status_file "$@" && status=0 || status=$?
  if [ "$status" -eq 0 ]; then
    status=$(cat "$status_file")
    if [ -z "$status" ]; then
      echo "error: the launcher exited 0 but training did not finish (its processes were killed?): failing" >&2
      status=1
    fi
  fi
  rm -f "$status_file"
  return "$status"
}
