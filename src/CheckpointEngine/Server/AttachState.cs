using System.Security.Cryptography;
using System.Text;

namespace CheckpointEngine.Server;

/// <summary>
/// What a member tells the others with the attach agreement: whether its worker maps the owners' segments, its worker's declaration
/// (the digest; empty when it declared nothing), and a digest of the declarations this member knows, its own included. Members that
/// all know the same declarations, holding every digest, skip the round in which declarations go round (see <see cref="ParameterServer"/>).
/// </summary>
internal sealed record AttachState(bool Maps, string Digest, string Known)
{
    /// <param name="worker">Null when the attach failed here (the agreement then fails the update).</param>
    public static AttachState Of(WorkerConnection? worker, IEnumerable<string> known)
    {
        var digest = worker?.Wants?.Digest() ?? "";
        var all = known.Append(digest).Where(d => d.Length > 0).Distinct().Order(StringComparer.Ordinal);
        return new(worker?.MapsSegments == true, digest, Convert.ToHexStringLower(SHA256.HashData(Encoding.ASCII.GetBytes(string.Join(',', all)))));
    }

    public byte[] ToBytes() => Encoding.ASCII.GetBytes($"{(Maps ? 1 : 0)}|{Digest}|{Known}");

    /// <exception cref="UpdateFailedException">Not an attach state: names the rank.</exception>
    public static AttachState Parse(byte[] bytes, int rank)
    {
        var fields = Encoding.ASCII.GetString(bytes).Split('|');
        return fields is [var maps and ("0" or "1"), var digest, var known] && (digest.Length == 0 || IsDigest(digest)) && IsDigest(known)
            ? new(maps == "1", digest, known)
            : throw new UpdateFailedException($"rank {rank} sent a malformed attach state ({bytes.Length} bytes)");
    }

    private static bool IsDigest(string s) => s.Length == 64 && s.All(char.IsAsciiHexDigitLower);
}
