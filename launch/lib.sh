# shellcheck shell=bash
# Shared by the launch scripts (sourced, not run).

# logs_of CMD...: where a command's per-process logs go: <its --workdir>/logs, else ./logs.
logs_of() {
  local dir=logs args=("$@") i
  for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
      --workdir=*) dir="${args[i]#--workdir=}/logs" ;;
      --workdir) dir="${args[i + 1]:-.}/logs" ;;
    esac
  done
  printf '%s\n' "$dir"
}

# quoted CMD...: the command as one shell-quoted line.
quoted() { printf '%q ' "$@" | sed 's/ $//'; }
