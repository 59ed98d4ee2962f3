namespace CheckpointEngine.Planning;

/// <summary>
/// How a shard-aware bucket crosses hosts (pure). Members whose workers keep the same bytes form a class. A bucket
/// staged on host H goes in two steps: the members on H take their parts from the stager (a part broadcast among
/// <see cref="Local"/>), then each class that has members elsewhere broadcasts its part from a head on H to those
/// members over its own group, all classes at once: between hosts each class moves only its part, and a host takes in
/// only the parts of the classes it has (an inference instance spanning two hosts: each takes about half the bucket).
/// The head is the class's member on H; for a class with no member there, a member of H acts as its proxy (members
/// take turns) and cuts that class's part out of the whole bucket as well as its own.
/// </summary>
/// <param name="Host">The stager's host.</param>
/// <param name="Local">The members on <see cref="Host"/>, ascending.</param>
/// <param name="Relays">Per class with members elsewhere, ascending by class.</param>
internal sealed record ClassRelay(int Host, int[] Local, IReadOnlyList<ClassRelay.Relay> Relays)
{
    /// <summary>One class's relay: <see cref="Members"/> starts with its head on the stager's host, then its members elsewhere, ascending.</summary>
    /// <param name="Proxy">The head is not of the class: it has no member on the stager's host.</param>
    public sealed record Relay(int Class, int[] Members, bool Proxy)
    {
        public int Head => Members[0];
    }

    /// <summary>The relay for buckets staged on host <paramref name="host"/>, or null on one host.</summary>
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
        var relays = new List<Relay>();
        var proxies = 0;
        foreach (var c in away.Select(m => classOf[m]).Distinct().Order())
        {
            var own = local.Where(m => classOf[m] == c).Cast<int?>().FirstOrDefault();
            var head = own ?? local[proxies++ % local.Length];
            relays.Add(new Relay(c, [head, .. away.Where(m => classOf[m] == c)], own is null));
        }
        return new ClassRelay(host, local, relays);
    }

    /// <summary>
    /// Whether relaying a bucket moves no more bytes into any other host than the plain way, which carries the whole bucket
    /// (<paramref name="plainBytes"/>) to every host: each host receives the part of every class it has members of
    /// (<paramref name="classBytes"/>, per class). It pays when hosts hold different classes (instances spanning hosts), or
    /// when few bytes are kept by several classes; tensors every class keeps whole cross once per class.
    /// </summary>
    public bool Pays(IReadOnlyList<long> classBytes, long plainBytes, IReadOnlyList<int> hostOf) =>
        Relays.SelectMany(r => r.Members.Skip(1).Select(m => hostOf[m]).Distinct().Select(h => (Host: h, Bytes: classBytes[r.Class])))
            .GroupBy(x => x.Host)
            .All(h => h.Sum(x => x.Bytes) <= plainBytes);

    /// <summary>The relays <paramref name="member"/> takes part in (as head, proxy or receiver), ascending by class.</summary>
    public IEnumerable<Relay> RelaysOf(int member) => Relays.Where(r => r.Members.Contains(member));

    /// <summary>The classes whose parts <paramref name="member"/> cuts out as their proxy.</summary>
    public IEnumerable<Relay> ProxiedBy(int member) => Relays.Where(r => r.Proxy && r.Head == member);

    /// <summary>Whether <paramref name="member"/> heads its own class's relay (and so must hold its part packed).</summary>
    public bool HeadsOwnClass(int member) => Relays.Any(r => !r.Proxy && r.Head == member);
}
