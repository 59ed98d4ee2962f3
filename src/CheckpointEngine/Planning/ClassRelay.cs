namespace CheckpointEngine.Planning;

/// <summary>
/// How a shard-aware bucket crosses hosts (pure). Members whose workers keep the same bytes form a class. A bucket
/// staged on host H goes in two steps: the members on H take their parts straight from the stager (a part broadcast
/// among <see cref="Local"/>), then each class that has members elsewhere broadcasts its part from its member on H
/// (the relay's first entry, its head) to those members over its own group. Between hosts each class moves only its
/// part, and all classes at once; the whole bucket never leaves H. A bucket whose host lacks a member of some class
/// that lives elsewhere has no relay (<see cref="For"/> is null) and goes the plain way, through every host leader.
/// </summary>
/// <param name="Host">The stager's host.</param>
/// <param name="Local">The members on <see cref="Host"/>, ascending.</param>
/// <param name="Relays">Per class with members elsewhere (ascending by class): its head on <see cref="Host"/> first, then those members, ascending.</param>
internal sealed record ClassRelay(int Host, int[] Local, IReadOnlyList<(int Class, int[] Members)> Relays)
{
    /// <summary>The relay for buckets staged on host <paramref name="host"/>, or null when none applies (one host, or a class missing there).</summary>
    /// <param name="hostOf">Member → host index.</param>
    /// <param name="classOf">Member → class index.</param>
    public static ClassRelay? For(int host, IReadOnlyList<int> hostOf, IReadOnlyList<int> classOf)
    {
        var members = Enumerable.Range(0, hostOf.Count).ToList();
        var local = members.Where(m => hostOf[m] == host).ToArray();
        var away = members.Where(m => hostOf[m] != host).ToList();
        if (local.Length == 0 || away.Count == 0)
        {
            return null;
        }
        var relays = new List<(int, int[])>();
        foreach (var c in away.Select(m => classOf[m]).Distinct().Order())
        {
            var head = local.Where(m => classOf[m] == c).Cast<int?>().FirstOrDefault();
            if (head is null)
            {
                return null; // Nobody on this host keeps these bytes: they cannot be relayed as a part.
            }
            relays.Add((c, [head.Value, .. away.Where(m => classOf[m] == c)]));
        }
        return new ClassRelay(host, local, relays);
    }

    /// <summary>
    /// Whether relaying a bucket moves no more bytes into any other host than the plain way, which carries the whole bucket
    /// (<paramref name="plainBytes"/>) to every host: each host receives the part of every class it has members of
    /// (<paramref name="classBytes"/>, per class). It pays when hosts hold different classes, or when few bytes are kept by
    /// several classes; tensors every class keeps whole cross once per class.
    /// </summary>
    public bool Pays(IReadOnlyList<long> classBytes, long plainBytes, IReadOnlyList<int> hostOf) =>
        Relays.SelectMany(r => r.Members.Skip(1).Select(m => hostOf[m]).Distinct().Select(h => (Host: h, Bytes: classBytes[r.Class])))
            .GroupBy(x => x.Host)
            .All(h => h.Sum(x => x.Bytes) <= plainBytes);

    /// <summary>The relay this member takes part in (as head or receiver), or null.</summary>
    public int[]? RelayOf(int member) => Relays.Select(r => r.Members).FirstOrDefault(m => m.Contains(member));
}
