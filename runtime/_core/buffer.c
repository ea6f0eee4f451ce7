/*
 * Buffer accessor: placeholder until runtime.buffer lands.
 */
#include "core.h"

int
rt_buffer_module_init(PyObject *module)
{
    return 0;
}
