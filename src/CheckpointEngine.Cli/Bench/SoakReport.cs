using System.Globalization;
using System.Text.Json;

namespace CheckpointEngine.Cli.Bench;

/// <summary>What one <c>ckpt-engine soak</c> run measured: per process its resident memory each round and the slope; a table or one JSON document.</summary>
internal sealed record SoakReport(MachineInfo Machine, DateTimeOffset Date, SoakSettings Settings, IReadOnlyList<SoakProcess> Processes, double Seconds)
{
    private static readonly CultureInfo Invariant = CultureInfo.InvariantCulture;

    /// <summary>Rounds after which fresh serve and worker processes were flat on the development machine (see the README's soak figures).</summary>
    private const int SteadyAfter = 1000;

    public string CommandLine => string.Join(' ', new[]
    {
        "./ckpt-engine soak",
        "--ranks " + Settings.Ranks.ToString(Invariant),
        "--rounds " + Settings.Rounds.ToString(Invariant),
        "--fit-from " + Settings.FitFrom.ToString(Invariant),
        Settings.Layers is { } l ? "--layers " + l.ToString(Invariant) : null,
        Settings.MaxSlope is { } m ? "--max-slope " + m.ToString("R", Invariant) : null,
    }.Where(s => s is not null));

    /// <summary>The processes that grew faster than <see cref="SoakSettings.MaxSlope"/> (none when it is not set).</summary>
    public IReadOnlyList<SoakProcess> OverLimit =>
        Settings.MaxSlope is { } max ? [.. Processes.Where(p => !(Slope(p) <= max))] : [];

    private double Slope(SoakProcess p) => p.Slope(Settings.FitRange.First, Settings.FitRange.Last);

    public void WriteText(TextWriter w)
    {
        ArgumentNullException.ThrowIfNull(w);
        var (first, last) = Settings.FitRange;
        w.WriteLine(CommandLine);
        w.WriteLine($"machine: {Machine.Cores} cores ({Machine.Cpu}), {Machine.Os}, {Machine.Dotnet}; {Date.UtcDateTime.ToString("yyyy-MM-dd HH:mm 'UTC'", Invariant)}");
        w.WriteLine(string.Create(Invariant,
            $"{Settings.Rounds} rounds in {Seconds:F1} s; each registers step k on every rank, gathers its metas, updates the worker and unregisters step k-1; RSS = VmRSS after the round; slope = least squares over rounds {first}..{last}, of VmRSS and of its parts (anon: heaps; file: mapped files and code; shmem: shared segments and the runtime's JIT code)"));
        var t = new Table(["process", "pid", "RSS round 1", $"RSS round {first}", $"RSS round {last}", "slope KiB/round", "anon", "file", "shmem"],
            [false, true, true, true, true, true, true, true, true]);
        foreach (var p in Processes)
        {
            t.Add(p.Name, p.Pid.ToString(Invariant), MiB(p.StartKiB), MiB(p.Samples[first - 1].Total), MiB(p.EndKiB), F(Slope(p)),
                F(p.Slope(first, last, s => s.Anonymous)), F(p.Slope(first, last, s => s.File)), F(p.Slope(first, last, s => s.Shared)));
        }
        w.Write(t.Text());
        if (last < SteadyAfter)
        {
            w.WriteLine($"note: the first few hundred rounds include the runtime's warm-up (GC budgets, tier-1 JIT); --rounds 3000 --fit-from {SteadyAfter + 1} measures the steady state");
        }
        if (Settings.MaxSlope is { } max)
        {
            w.WriteLine(OverLimit.Count == 0
                ? string.Create(Invariant, $"every process within {max:R} KiB/round")
                : string.Create(Invariant, $"over {max:R} KiB/round: {string.Join(", ", OverLimit.Select(p => p.Name))}"));
        }
    }

    public string ToJson()
    {
        var (first, last) = Settings.FitRange;
        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("date", Date.UtcDateTime);
            w.WriteString("command", CommandLine);
            Machine.WriteJson(w);
            w.WriteStartObject("settings");
            w.WriteNumber("ranks", Settings.Ranks);
            w.WriteNumber("rounds", Settings.Rounds);
            w.WriteNumber("fit_first_round", first);
            w.WriteNumber("fit_last_round", last);
            if (Settings.MaxSlope is { } max)
            {
                w.WriteNumber("max_slope_kib_per_round", max);
            }
            else
            {
                w.WriteNull("max_slope_kib_per_round");
            }
            w.WriteNumber("layers", Settings.LayerCount);
            w.WriteEndObject();
            w.WriteNumber("seconds", Seconds);
            w.WriteStartArray("processes");
            foreach (var p in Processes)
            {
                w.WriteStartObject();
                w.WriteString("name", p.Name);
                w.WriteNumber("pid", p.Pid);
                w.WriteNumber("rss_start_kib", p.StartKiB);
                w.WriteNumber("rss_end_kib", p.EndKiB);
                Slope(w, "slope_kib_per_round", Slope(p));
                Slope(w, "anon_slope_kib_per_round", p.Slope(first, last, s => s.Anonymous));
                Slope(w, "file_slope_kib_per_round", p.Slope(first, last, s => s.File));
                Slope(w, "shmem_slope_kib_per_round", p.Slope(first, last, s => s.Shared));
                foreach (var (name, part) in new (string, Func<ResidentMemory, long>)[] { ("rss_kib", s => s.Total), ("anon_kib", s => s.Anonymous), ("file_kib", s => s.File), ("shmem_kib", s => s.Shared) })
                {
                    w.WriteStartArray(name);
                    foreach (var s in p.Samples)
                    {
                        w.WriteNumberValue(part(s));
                    }
                    w.WriteEndArray();
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }

    private static void Slope(Utf8JsonWriter w, string name, double slope)
    {
        if (double.IsNaN(slope))
        {
            w.WriteNull(name);
        }
        else
        {
            w.WriteNumber(name, Math.Round(slope, 3));
        }
    }

    private static string F(double v) => double.IsNaN(v) ? "–" : v.ToString("F1", Invariant);

    private static string MiB(long kib) => (kib / 1024.0).ToString("F1", Invariant) + " MiB";
}
