#!/usr/bin/env bash
# Mutation testing (Stryker.NET, pinned in .config/dotnet-tools.json) of the parsers, planners and the
# worker protocol against the unit tests. Too slow for .ci/run: run it by hand after changing that code.
#
#   scripts/mutation-test.sh checkpoints|memory|planning|worker|core|all [STRYKER OPTION...]
#
# core = checkpoints + memory + planning in one run (one coverage capture instead of three).
# Settings are in scripts/mutation/stryker-config.json. Coverage is "perTestInIsolation": with Stryker
# 5.1's "perTest" on Microsoft.Testing.Platform, once one test outlives the 30 s capture limit nearly
# every later test times out waiting for the coverage relay and is marked Dubious, so each mutant would
# run the whole suite. Isolation costs 6-7 minutes of capture per run on two cores; then each mutant
# runs only the tests that reach it (5-25 s: a few heavy tests, such as the 2,000-GPU simulation, are
# slow under Stryker's instrumentation, hence the longer additional-timeout).
# Prints the score per folder and where the HTML report is; exits non-zero when a folder's score is
# below its threshold (the --break-at of that scope).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
here="$root/scripts/mutation"
scope=${1:-}
extra=("${@:2}") # passed on to Stryker, e.g. --log-to-file

# Threshold per folder (percent): the scores these folders reached when the gate was set, less a little.
declare -A break_at=([checkpoints]=85 [memory]=85 [planning]=85 [worker]=85)

# Which files each folder means. Stryker mutates one project per run.
declare -A project=([checkpoints]=CheckpointEngine.csproj [memory]=CheckpointEngine.csproj [planning]=CheckpointEngine.csproj
    [worker]=CheckpointEngine.Worker.csproj)
declare -A mutate=(
    [checkpoints]='**/CheckpointEngine/Checkpoints/*.cs'
    [memory]='**/CheckpointEngine/Memory/BufferLayout.cs'
    [planning]='**/CheckpointEngine/Planning/*.cs'
    [worker]='**/Protocol/WorkerFraming.cs **/Protocol/WorkerMessage.cs **/Protocol/WorkerWants.cs **/Receiving/ReceiveSession.cs **/Tensors/DTypes.cs'
)

usage() {
    echo "usage: $0 checkpoints|memory|planning|worker|core|all" >&2
    exit 2
}

# run NAME FOLDER...: one Stryker run over the folders' files (all in the same project).
run() {
    local name=$1
    shift
    local out="$here/StrykerOutput/$name"
    local args=() lowest=100
    for folder in "$@"; do
        set -f
        for glob in ${mutate[$folder]}; do
            args+=(--mutate "$glob")
        done
        set +f
        ((break_at[$folder] < lowest)) && lowest=${break_at[$folder]}
    done
    rm -rf "$out"
    echo "== $name: ${project[$1]}, $(printf '%s ' "$@")"
    local started=$SECONDS status=0
    # Solution mode over a solution of just the two libraries and the unit tests: Stryker only finds a
    # project to mutate among the test project's direct references otherwise, and the tests reach
    # these libraries through the CLI. A build output of its own (ArtifactsPath) keeps the mutated
    # assemblies out of artifacts/ and away from builds that run meanwhile.
    (cd "$here" && ArtifactsPath="$root/artifacts/mutation" dotnet stryker --solution CheckpointEngine.Mutation.slnx \
        --config-file stryker-config.json --project "${project[$1]}" "${args[@]}" --break-at "$lowest" \
        --output "$out" --skip-version-check "${extra[@]}") || status=$?
    echo "== $name took $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s"
    local report="$out/reports/mutation-report.json"
    if [[ ! -f $report ]]; then
        echo "no report: Stryker failed (exit $status); see $out/logs" >&2
        return 1
    fi
    echo "HTML report: $out/reports/mutation-report.html"
    # Stryker's score per folder: (killed + timeout) / (killed + timeout + survived + no coverage).
    local failed=0
    for folder in "$@"; do
        # shellcheck disable=SC2086 # the globs are words; score.py matches them, not the shell
        set -f
        python3 "$here/score.py" "$report" "$folder" "${break_at[$folder]}" ${mutate[$folder]} || failed=1
        set +f
    done
    return $((failed | (status != 0)))
}

tool_restore() {
    (cd "$root" && dotnet tool restore >/dev/null)
}

case $scope in
    checkpoints | memory | planning | worker)
        tool_restore
        run "$scope" "$scope"
        ;;
    core)
        tool_restore
        run core checkpoints memory planning
        ;;
    all)
        tool_restore
        failed=0
        run core checkpoints memory planning || failed=1
        run worker worker || failed=1
        exit $failed
        ;;
    *) usage ;;
esac
