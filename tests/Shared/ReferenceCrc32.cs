namespace CheckpointEngine.Tests.Support;

/// <summary>
/// The IEEE CRC-32 from its definition, a byte-at-a-time table over the reflected polynomial: the independent
/// reference that <see cref="Worker.TensorChecksum"/> (vectorized, in combined pieces) must equal.
/// </summary>
internal static class ReferenceCrc32
{
    private static readonly uint[] Table = Enumerable.Range(0, 256).Select(n =>
    {
        var c = (uint)n;
        for (var k = 0; k < 8; k++)
        {
            c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return c;
    }).ToArray();

    public static uint Of(ReadOnlySpan<byte> bytes)
    {
        var crc = 0xFFFFFFFFu;
        foreach (var b in bytes)
        {
            crc = Table[(crc ^ b) & 0xFF] ^ (crc >> 8);
        }
        return crc ^ 0xFFFFFFFFu;
    }
}
