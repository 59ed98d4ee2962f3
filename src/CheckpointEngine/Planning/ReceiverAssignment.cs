namespace CheckpointEngine.Planning;

/// <summary>
/// Who reads which bucket in a P2P update (pure). Receivers are the lowest rank of each network-device
/// group of the receiving ranks (no more receivers than owner devices). Buckets are taken round-robin
/// over the owners' network devices, and dealt to the receivers in rounds in which no two buckets come
/// from the same owner device, so concurrent reads spread over the owners' NICs instead of queueing on one.
/// </summary>
public static class ReceiverAssignment
{
    /// <param name="buckets">Buckets with their owner, in the owners' order.</param>
    /// <param name="ownerDevice">Network device of each owner rank.</param>
    /// <param name="receiverGroups">The receiving ranks grouped by network device, groups in order.</param>
    /// <returns>(receiver, bucket) in the order to process them; consecutive runs of up to one bucket per receiver form a round.</returns>
    public static IReadOnlyList<(int Receiver, T Bucket)> Assign<T>(IReadOnlyList<(int Owner, T Bucket)> buckets,
        Func<int, string> ownerDevice, IReadOnlyList<IReadOnlyList<int>> receiverGroups)
    {
        if (buckets.Count == 0)
        {
            return [];
        }
        if (receiverGroups.Count == 0 || receiverGroups.Any(g => g.Count == 0))
        {
            throw new ArgumentException("every receiver group needs at least one rank", nameof(receiverGroups));
        }
        var byDevice = buckets.GroupBy(b => ownerDevice(b.Owner), StringComparer.Ordinal).Select(g => g.ToList()).ToList();
        var receivers = receiverGroups.Take(Math.Min(receiverGroups.Count, byDevice.Count)).Select(g => g.Min()).ToList();
        var interleaved = Enumerable.Range(0, byDevice.Max(d => d.Count))
            .SelectMany(column => byDevice.Where(d => column < d.Count).Select(d => d[column]))
            .ToList();
        var assigned = new List<(int Receiver, T Bucket)>(interleaved.Count);
        var next = 0;
        while (next < interleaved.Count)
        {
            var busy = new HashSet<string>(StringComparer.Ordinal);
            foreach (var receiver in receivers)
            {
                if (next >= interleaved.Count || !busy.Add(ownerDevice(interleaved[next].Owner)))
                {
                    break; // That owner device already serves this round: start the next round.
                }
                assigned.Add((receiver, interleaved[next].Bucket));
                next++;
            }
        }
        return assigned;
    }

    /// <summary>Ranks grouped by their network device, groups in order of their lowest rank.</summary>
    public static IReadOnlyList<IReadOnlyList<int>> GroupByDevice(IEnumerable<int> ranks, Func<int, string> device) =>
        ranks.Order().GroupBy(device, StringComparer.Ordinal).Select(g => (IReadOnlyList<int>)g.ToList()).ToList();
}
