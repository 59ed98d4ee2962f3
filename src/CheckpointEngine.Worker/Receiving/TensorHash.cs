using System.Security.Cryptography;
using CheckpointEngine.Memory;

namespace CheckpointEngine.Worker;

/// <summary>SHA-256 of a tensor's bytes as lowercase hex: the optional checksum of the worker protocol.</summary>
public static unsafe class TensorHash
{
    private const int Chunk = 1 << 30;

    /// <summary>Hashes <paramref name="length"/> bytes at <paramref name="pointer"/> (any size; large ones in 1 GiB pieces).</summary>
    public static string Sha256Hex(byte* pointer, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (length <= Chunk)
        {
            return Convert.ToHexStringLower(SHA256.HashData(new ReadOnlySpan<byte>(pointer, (int)length)));
        }
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        for (long done = 0; done < length; done += Chunk)
        {
            hash.AppendData(new ReadOnlySpan<byte>(pointer + done, (int)Math.Min(Chunk, length - done)));
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>Hashes a tensor's bytes wherever they are (GPU memory is copied to the host first).</summary>
    public static string Sha256Hex(ReceivedTensor view)
    {
        if (!view.OnDevice && view.IsPacked)
        {
            return Sha256Hex(view.Pointer, view.Length);
        }
        if (!view.OnDevice)
        {
            using var rows = IncrementalHash.CreateHash(HashAlgorithmName.SHA256); // A part in place: its rows in order.
            for (long i = 0; i < view.Rows; i++)
            {
                rows.AppendData(view.Row(i));
            }
            return Convert.ToHexStringLower(rows.GetHashAndReset());
        }
        using var host = NativeBuffer.Allocate(Math.Max(1, view.Length));
        view.CopyTo(host.Pointer);
        return Sha256Hex(host.Pointer, view.Length);
    }

    public static string Sha256Hex(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(SHA256.HashData(bytes));
}
