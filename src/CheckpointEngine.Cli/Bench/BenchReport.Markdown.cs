using System.Text;

namespace CheckpointEngine.Cli.Bench;

/// <summary>The report as markdown, written to paste under a README heading (it has no heading of its own).</summary>
internal sealed partial record BenchReport
{
    public string ToMarkdown()
    {
        var sb = new StringBuilder();
        sb.Append("Measured with `").Append(CommandLine).Append("` on ").Append(DateText).Append(": ").Append(MachineLine).Append(".\n\n");
        sb.Append("**Baselines**, measured in the same run:\n\n").Append(BaselineTable().Markdown()).Append('\n');
        foreach (var note in BaselineNotes)
        {
            sb.Append(char.ToUpperInvariant(note[0])).Append(note[1..]).Append(".\n\n");
        }
        if (Peers.Count > 0)
        {
            sb.Append("**The peer** (`bench/torch_peer.py`, torch.distributed): ").Append(PeerNote).Append(".\n\n").Append(PeerTable().Markdown()).Append('\n');
        }
        if (HasUpdates)
        {
            sb.Append("**Updates**: the median (min–max) of ").Append(Settings.Repeat).Append(Settings.Repeat == 1 ? " update" : " updates")
                .Append(" after a warm-up update in the same rank processes; *first s* is that warm-up, the first update of fresh processes, ")
                .Append(Settings.Prepare
                    ? "after the ranks prepared it (*prepare s*: the workers mapped and faulted in what the update reads, as a serving rank has them do ahead of its first update). "
                    : "unprepared (`--no-prepare`: what a one-shot `update` sees). ")
                .Append("GB/s per worker is the bytes each worker received over the update's seconds; ")
                .Append("broadcast is compared with single-thread memcpy, P2P with one loopback TCP connection; stage sums are the largest over the ranks and overlap.\n\n");
        }
        foreach (var note in MethodNotes)
        {
            sb.Append(char.ToUpperInvariant(note[0])).Append(note[1..]).Append(".\n\n");
        }
        sb.Append(ConfigurationTable(markdown: true).Markdown()).Append('\n');
        sb.Append(char.ToUpperInvariant(PeakNote[0])).Append(PeakNote[1..]).Append(".\n\n");
        sb.Append("**Seconds per GiB** (median update seconds over GiB per worker), by size and ranks:\n\n").Append(ScalingTable().Markdown());
        return sb.ToString();
    }
}
