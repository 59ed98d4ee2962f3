namespace CheckpointEngine.Hosting.Tracing;

/// <summary>
/// Every rank's bucket timings of one update, lined up on one clock: the spans of a timeline and the
/// pipeline efficiency. Ranks are aligned by the wall clock their updates started at (exact on one
/// host, as good as the hosts' clock sync across hosts); the origin is the earliest start.
/// </summary>
internal sealed record UpdateTrace(string Checkpoint, string Method, IReadOnlyList<RankTimeline> Ranks)
{
    public IReadOnlyList<TraceSpan> Spans()
    {
        var spans = new List<TraceSpan>();
        if (Ranks.Count == 0)
        {
            return spans;
        }
        var origin = Ranks.Min(r => r.Started);
        foreach (var r in Ranks.OrderBy(r => r.Rank))
        {
            var shift = (r.Started - origin).TotalMicroseconds;
            spans.Add(new TraceSpan(r.Rank, TraceTrack.Update, -1, -1, r.Buckets.Sum(b => b.Bytes), shift, r.Duration.TotalMicroseconds));
            var waitedUntil = TimeSpan.Zero;
            foreach (var b in r.Buckets)
            {
                void Add(TraceTrack track, TimeSpan start, TimeSpan end) =>
                    spans.Add(new TraceSpan(r.Rank, track, b.Index, b.Owner, b.Bytes, shift + start.TotalMicroseconds, (end - start).TotalMicroseconds));

                // Offsets are zero where this rank had no part (it did not stage this bucket).
                var staged = b.HostToDeviceEnd > TimeSpan.Zero;
                if (staged)
                {
                    Add(TraceTrack.Stage, b.HostToDeviceStart, b.HostToDeviceEnd);
                }
                // Buckets staged ahead wait side by side; the track shows each from the previous one's broadcast on.
                var waitFrom = b.HostToDeviceEnd > waitedUntil ? b.HostToDeviceEnd : waitedUntil;
                if (staged && b.BroadcastStart > waitFrom)
                {
                    Add(TraceTrack.WaitForBroadcast, waitFrom, b.BroadcastStart);
                    waitedUntil = b.BroadcastStart;
                }
                Add(TraceTrack.Broadcast, b.BroadcastStart, b.BroadcastEnd);
                if (b.ReloadStart > b.BroadcastEnd)
                {
                    Add(TraceTrack.WaitForReload, b.BroadcastEnd, b.ReloadStart);
                }
                Add(TraceTrack.Reload, b.ReloadStart, b.ReloadEnd);
            }
        }
        return spans;
    }

    /// <summary>The data-link legs between hosts, one per bucket and pair of ranks: both ends' views paired (see <see cref="TraceLeg"/>), in the receiver's time.</summary>
    public IReadOnlyList<TraceLeg> Legs()
    {
        if (Ranks.Count == 0)
        {
            return [];
        }
        var origin = Ranks.Min(r => r.Started);
        return [.. Ranks.SelectMany(r => (r.Links ?? []).Select(l => (r.Rank, Shift: (r.Started - origin).TotalMicroseconds, l)))
            .GroupBy(x => (x.l.Bucket, From: x.l.Sent ? x.Rank : x.l.Peer, To: x.l.Sent ? x.l.Peer : x.Rank))
            .Select(g =>
            {
                var (sent, received) = (g.Where(x => x.l.Sent).ToList(), g.Where(x => !x.l.Sent).ToList());
                var seen = received.Count > 0 ? received : sent; // An end missing from the trace: the other speaks for both.
                var (start, end) = (seen.Min(x => x.Shift + x.l.Start.TotalMicroseconds), seen.Max(x => x.Shift + x.l.End.TotalMicroseconds));
                // The sender's time runs on until its last bytes arrive: a few MB of a bucket sit in the kernel's buffers when its last send returns.
                var tail = sent.Count > 0 ? Math.Max(0, end - sent.Max(x => x.Shift + x.l.End.TotalMicroseconds)) : 0;
                return new TraceLeg(g.Key.Bucket, g.Key.From, g.Key.To, received.FirstOrDefault().l?.PeerHost ?? $"rank {g.Key.From}",
                    sent.FirstOrDefault().l?.PeerHost ?? $"rank {g.Key.To}", seen.Sum(x => x.l.Bytes), start, end - start,
                    Busy(sent.Count > 0 ? sent : seen) + TimeSpan.FromMicroseconds(tail), Busy(seen));
            })
            .OrderBy(l => l.StartUs)];

        static TimeSpan Busy(IEnumerable<(int Rank, double Shift, Server.LinkTiming l)> ends) => TimeSpan.FromTicks(ends.Sum(x => x.l.Busy.Ticks));
    }

    /// <summary>
    /// The busiest stage's time (summed over buckets, on the rank where that sum is largest) over the
    /// pipeline's wall time (first staging to last reload, over all ranks). 1.0: the stages overlap
    /// perfectly and the update takes exactly as long as its slowest stage; 0.33 with three equal
    /// stages that do not overlap at all. Setup (sizing, attaching the worker) is not counted.
    /// </summary>
    public PipelineEfficiency Efficiency()
    {
        var stages = Spans().Where(s => s.Track.IsStage()).ToList();
        if (stages.Count == 0)
        {
            return new PipelineEfficiency(0, 0, TraceTrack.Stage, 0, 0);
        }
        var pipeline = stages.Max(s => s.EndUs) - stages.Min(s => s.StartUs);
        var busiest = stages.GroupBy(s => (s.Rank, s.Track))
            .Select(g => (g.Key.Rank, g.Key.Track, Us: g.Sum(s => s.DurationUs)))
            .OrderByDescending(x => x.Us).ThenBy(x => x.Rank).ThenBy(x => x.Track).First();
        return new PipelineEfficiency(busiest.Us > 0 ? pipeline / busiest.Us : 0, busiest.Rank, busiest.Track, busiest.Us, pipeline);
    }

    /// <summary>Every member's bucket timings of an update, by one all-gather of small JSON blobs (a collective: every member calls it).</summary>
    public static async Task<UpdateTrace> GatherAsync(Runtime.Collectives.ICommunicator group, string checkpoint, string method, Server.UpdateReport report,
        DateTimeOffset finished, TimeSpan timeout, CancellationToken ct)
    {
        var blobs = await group.AllGatherAsync(RankTimeline.From(report, finished).ToJson(), timeout, ct).ConfigureAwait(false);
        return new UpdateTrace(checkpoint, method, blobs.Select((b, r) => RankTimeline.FromJson(b, group.Members[r])).ToList());
    }

    /// <summary>Where the trace of <paramref name="method"/> goes when one run writes several: the method before the extension (trace.json → trace.p2p.json).</summary>
    public static string PathFor(string path, string method)
    {
        var ext = Path.GetExtension(path);
        return ext.Length == 0 ? $"{path}.{method}" : $"{path[..^ext.Length]}.{method}{ext}";
    }
}
