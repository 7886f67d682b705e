#include "pluginCommon.h"

#include <cstring>

namespace tost_edge
{
namespace plugin
{
namespace
{
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};
}

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    gLoggerFinder = finder;
}

void logError(std::string const& msg) noexcept
{
    if (gLoggerFinder == nullptr)
    {
        return;
    }
    if (nvinfer1::ILogger* logger = gLoggerFinder->findLogger())
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, ("[tost_edge] " + msg).c_str());
    }
}

namespace
{
nvinfer1::PluginField const* find(nvinfer1::PluginFieldCollection const* fc, char const* name) noexcept
{
    if (fc == nullptr)
    {
        return nullptr;
    }
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        if (fc->fields[i].name != nullptr && std::strcmp(fc->fields[i].name, name) == 0)
        {
            return &fc->fields[i];
        }
    }
    return nullptr;
}
} // namespace

bool readInt(nvinfer1::PluginFieldCollection const* fc, char const* plugin, char const* name, int32_t& out) noexcept
{
    auto const* f = find(fc, name);
    if (f == nullptr || f->data == nullptr || f->length != 1 || f->type != nvinfer1::PluginFieldType::kINT32)
    {
        logError(std::string(plugin) + ": field '" + name + "' expected one kINT32 value");
        return false;
    }
    out = *static_cast<int32_t const*>(f->data);
    return true;
}

bool readFloat(nvinfer1::PluginFieldCollection const* fc, char const* plugin, char const* name, float& out) noexcept
{
    auto const* f = find(fc, name);
    if (f == nullptr || f->data == nullptr || f->length != 1 || f->type != nvinfer1::PluginFieldType::kFLOAT32)
    {
        logError(std::string(plugin) + ": field '" + name + "' expected one kFLOAT32 value");
        return false;
    }
    out = *static_cast<float const*>(f->data);
    return true;
}

bool checkRanks(char const* plugin, nvinfer1::DimsExprs const* inputs, int32_t n, int32_t const* ranks) noexcept
{
    for (int32_t i = 0; i < n; ++i)
    {
        if (inputs[i].nbDims != ranks[i])
        {
            logError(std::string(plugin) + ": input " + std::to_string(i) + " expected rank "
                + std::to_string(ranks[i]) + ", got " + std::to_string(inputs[i].nbDims));
            return false;
        }
    }
    return true;
}

bool isFloatType(nvinfer1::DataType t) noexcept
{
    return t == nvinfer1::DataType::kFLOAT || t == nvinfer1::DataType::kHALF || t == nvinfer1::DataType::kBF16;
}

int32_t toKernelDtype(nvinfer1::DataType t) noexcept
{
    switch (t)
    {
    case nvinfer1::DataType::kHALF: return 1;
    case nvinfer1::DataType::kBF16: return 2;
    default: return 0;
    }
}

nvinfer1::IPluginCapability* PluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    }
    return nullptr;
}

nvinfer1::PluginFieldCollection const* PluginBase::publish() noexcept
{
    mSerializedFc.nbFields = static_cast<int32_t>(mSerialized.size());
    mSerializedFc.fields = mSerialized.data();
    return &mSerializedFc;
}

} // namespace plugin
} // namespace tost_edge
